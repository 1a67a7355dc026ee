#!/usr/bin/env bash
# Side-by-side benchmark (issue 7): agent-host with the echo plugin vs flytekit's
# `pyflyte serve connector` (flytekit==1.16.31, tests/bench/flytekit_echo.py) vs a floor server
# (tests/src/bin/bench_floor.rs: tonic, the same paths, fixed answers, no work), all driven by
# h2load over h2c on loopback; the servers pinned to CPU 0, h2load to CPU 1. Then agent-host's
# start-up to the first ListAgents answer with 5 plugins in the directory.
# Release builds; plugins stripped, as shipped. Results: $OUT.md (table) and $OUT.json.
#
#   bash tests/bench/compare.sh [compare.py options, e.g. --runs 5 --seconds 4]
#
# Environment: OUT (default target/release/bench/compare), SKIP_BUILD=1 to use what is built.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo="$PWD"
target="${CARGO_TARGET_DIR:-target}/release"
out="$target/bench"
mkdir -p "$out"
bash tests/bench/setup.sh >&2
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --locked -p agent-host -p agent-host-tests --bin agent-host --bin bench-floor
    cargo build --release --locked -p echo-plugin -p webhook-plugin -p sensor-plugin -p rest-job-plugin -p chat-plugin -p fixture-noop
fi

# The echo plugin alone, for the load.
rm -rf "$out/echo-dir" && mkdir -p "$out/echo-dir"
strip -o "$out/echo-dir/echo.so" "$target/libecho_plugin.so"

# The noop plugin (echo's task types, agents that do no work): the host and the SDK alone. It
# serves echo's task types, so it is moved out of target/release, the README's plugin directory.
if [[ -f "$target/libfixture_noop.so" ]]; then
    mkdir -p "$out/noop-dir"
    strip -o "$out/noop-dir/noop.so" "$target/libfixture_noop.so"
    rm -f "$target/libfixture_noop.so"
fi

# The five example plugins of plugins/ (echo, webhook, sensor, rest-job, chat) for the start-up
# and the idle RSS with the example plugins loaded (each must pass `agent-host check`).
rm -rf "$out/five" && mkdir -p "$out/five"
n=0
for lib in "$target"/lib*.so; do
    name="$(basename "$lib" .so)"; name="${name#lib}"
    case "$name" in *_plugin) ;; *) continue ;; esac
    "$target/agent-host" check "$lib" > /dev/null 2>&1 || continue
    [[ $n -lt 5 ]] || break
    strip -o "$out/five/$name.so" "$lib"
    n=$((n + 1))
done
agents=0
for f in "$out"/five/*.so; do
    agents=$((agents + $("$target/agent-host" check "$f" --json | "$repo/.venv-bench/bin/python" -c 'import json,sys; print(len(json.load(sys.stdin)["agents"]))')))
done
echo "start-up directory: $(ls "$out/five" | tr '\n' ' ')($n plugins, $agents agents)" >&2

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$repo/.venv-bench/bin/python" tests/bench/compare.py \
    --host-bin "$target/agent-host" --floor-bin "$target/bench-floor" --plugin-dir "$out/echo-dir" --noop-dir "$out/noop-dir" \
    --pyflyte "$repo/.venv-bench/bin/pyflyte" --startup-dir "$out/five" --startup-agents "$agents" \
    --out "${OUT:-$out/compare}" "$@"
