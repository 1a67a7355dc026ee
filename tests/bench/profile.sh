#!/usr/bin/env bash
# Where agent-host's time goes under load: perf (cpu-clock samples, the whole process) while
# h2load drives one request kind at 64 streams; the same pinning as compare.sh.
#
#   bash tests/bench/profile.sh BODY_FILE GRPC_PATH [SECONDS] [SERVER_BIN [ARGS…]]
#
# BODY_FILE: a gRPC-framed request (compare.py's body-*.bin in its work directory). Without
# SERVER_BIN, agent-host serves the stripped echo plugin of compare.sh's echo-dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
body="$1"; path="$2"; secs="${3:-10}"; shift 3 || shift $#
target="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
if [[ $# -gt 0 ]]; then
    cmd=("$@")
else
    printf '[server]\nhost = "127.0.0.1"\nport = 0\nmetrics_port = 0\n[loader]\nplugin_dir = "%s"\nwork_dir = "%s/w"\n[log]\nlevel = "warn"\n' \
        "$PWD/$target/bench/echo-dir" "$work" > "$work/host.toml"
    cmd=("$target/agent-host" serve --config "$work/host.toml")
fi
taskset -c 0 "${cmd[@]}" > "$work/out" 2> "$work/err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
until grep -q "listening grpc=" "$work/out"; do sleep 0.05; done
addr="$(grep -o 'grpc=[^ ]*' "$work/out" | head -1 | cut -d= -f2)"
sleep 0.5
h2() { taskset -c 1 h2load -c 1 -t 1 -m 64 --data "$body" -H 'content-type: application/grpc' -H 'te: trailers' "$@" "http://$addr$path"; }
h2 -D 1 > /dev/null
ctx() { for t in /proc/$pid/task/*; do echo "$(cat "$t/comm") $(grep -E '^(non)?voluntary_ctxt_switches' "$t/status" | awk '{print $2}' | paste -sd/)"; done | sort; }
ctx > "$work/ctx-before"
perf record -q -e cpu-clock -F 2000 -g -p "$pid" -o "$work/perf.data" -- sleep "$secs" 2> /dev/null &
perf_pid=$!
h2 -D "$secs" | grep -E "finished in|requests:"
wait $perf_pid
ctx > "$work/ctx-after"
echo "context switches (voluntary/involuntary) per thread, before → after:"
paste "$work/ctx-before" "$work/ctx-after"
perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2> /dev/null | grep -v '^#' | grep -E '^ +[0-9]' | head -45
echo "perf data: $work/perf.data"
