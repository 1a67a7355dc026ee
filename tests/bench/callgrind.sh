#!/usr/bin/env bash
# Instructions per request, exactly: the server under callgrind while h2load sends one request
# kind at 64 streams. The counts do not depend on how busy the machine is, which timings do, so
# this is how BENCHMARKS.md compares one change with the next.
#
#   bash tests/bench/callgrind.sh BODY_FILE GRPC_PATH PLUGIN_DIR|floor [REQUESTS] [OUT_FILE]
#
# BODY_FILE: a gRPC-framed request (compare.sh's `--bodies-dir`, or compare.py's work
# directory). PLUGIN_DIR: the plugins agent-host serves (e.g. target/release/bench/echo-dir);
# `floor` runs the floor instead, answering from ANSWERS_DIR (compare.py's answers). The first
# 2,000 requests (WARMUP) warm up and are not counted. Prints the total and the count per request; the
# profile is left in OUT_FILE.1 for `callgrind_annotate --inclusive=yes OUT_FILE.1`. For function
# names in a plugin, build it with `CARGO_PROFILE_RELEASE_STRIP=none`.
# Extra environment for the server (LD_PRELOAD, GLIBC_TUNABLES): SERVER_ENV="A=1 B=2".
set -euo pipefail
body="$(realpath "$1")"; path="$2"; plugins="$3"; requests="${4:-20000}"
[[ "$plugins" == floor ]] || plugins="$(realpath "$plugins")"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
work="$(mktemp -d)"
out="${5:-${TMPDIR:-/tmp}/agent-host-callgrind.$$.out}"
target="${CARGO_TARGET_DIR:-target}/release"
if [[ "$plugins" == floor ]]; then
    cmd=("$target/bench-floor" "${ANSWERS_DIR:?floor needs ANSWERS_DIR}" 127.0.0.1:0)
else
    printf '[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n[loader]\nplugin_dir = "%s"\nwork_dir = "%s/w"\n[log]\nlevel = "warn"\n' \
        "$plugins" "$work" > "$work/host.toml"
    cmd=("$target/agent-host" serve --config "$work/host.toml")
fi
# shellcheck disable=SC2086 # SERVER_ENV is a list of assignments
env ${SERVER_ENV:-} valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$out" \
    "${cmd[@]}" > "$work/stdout" 2> "$work/stderr" &
pid=$!
stop() {
    kill -INT "$pid" 2>/dev/null || true
    (sleep 5; kill -KILL "$pid" 2>/dev/null || true) &
    wait "$pid" 2>/dev/null || true
}
trap 'stop; rm -rf "$work"' EXIT
for _ in $(seq 600); do grep -q "listening grpc=" "$work/stdout" 2>/dev/null && break; sleep 0.1; done
addr="$(grep -o 'grpc=[^ ]*' "$work/stdout" | head -1 | cut -d= -f2)"
[[ -n "$addr" ]] || { cat "$work/stderr" >&2; echo "the server did not start" >&2; exit 1; }
h2() { h2load -c 1 -t 1 -m 64 --data "$body" -H 'content-type: application/grpc' -H 'te: trailers' "$@" "http://$addr$path"; }
check() { grep -q "$1 succeeded, 0 failed, 0 errored" || { echo "requests failed (see h2load above)" >&2; exit 1; }; }
warmup="${WARMUP:-2000}"
h2 -n "$warmup" | tee "$work/warm" | grep -E "^requests:" >&2
check "$warmup" < "$work/warm"
callgrind_control -z "$pid" > /dev/null
h2 -n "$requests" | tee "$work/run" | grep -E "^requests:" >&2
check "$requests" < "$work/run"
callgrind_control -d "$pid" > /dev/null
stop
trap 'rm -rf "$work"' EXIT
profile="$(ls -t "$out".* | head -1)"
total="$(grep -m1 -E '^(summary|totals):' "$profile" | awk '{print $2}')"
echo "$profile: $total instructions, $((total / requests)) per request"
