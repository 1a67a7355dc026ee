#!/usr/bin/env bash
# Soak runs of RELIABILITY.md (not part of CI: too long for the per-PR gate). Results go to
# tests/RELIABILITY-RESULTS.md by hand, with the date and the sizes used.
#
#   bash tests/soak/run.sh [memory|threads|reload|interop|all] [RELOADS] [LOAD_SECONDS]
#
#   memory  row 2: RELOADS reloads of echo (default 1000), RSS per generation, then
#           LOAD_SECONDS (default 600) of constant load with no reloads (RSS must stay flat),
#           then loader.max_libraries reached: refused with a metric, host still up.
#   threads row 15: RELOADS reloads (default 100) of each of echo (its plugin runtime only),
#           the `threads` fixture (threads of its own, stopped at shutdown) and the `leaky`
#           fixture (the same threads, ignoring shutdown), each in its own host with a 1 s
#           drain deadline: thread counts back to baseline after each retire for the first
#           two, every retired version of leaky reported in agent_host_generations_leaked_total.
#   reload  row 1 at soak size: tests/tests/reload_under_load.rs with RELOADS swaps (default
#           1000) under a paced load whose rate, in unary calls per second, is the third
#           argument here (default 500), plus 3 GetTaskLogs streams; a 30 s no-swap baseline
#           first, and p99 during the swaps held to 2x the baseline's.
#           RELOAD_PROFILE=release builds and runs it (host, test and echo builds) in release.
#   interop row 14: tests/soak/interop.py: two hosts on two loopback ports behind one grpcio
#           channel set up like propeller's (round_robin, keepalive 30 s / 10 s, 10 s deadlines),
#           A's plugin replaced every 2 s while B gets SIGTERM and is restarted (three times),
#           with a 20 s max_connection_age and a quiet spell for keepalive pings; the second
#           argument is the length in seconds (default 300).
#
# Row 17 (LeakSanitizer) has its own driver: tests/soak/lsan.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

what="${1:-all}"
reloads="${2:-1000}"
load_seconds="${3:-600}"

bash tests/build-fixtures.sh >/dev/null
bash tests/setup-python.sh >/dev/null
fixtures=target/debug/fixtures
# The long runs use private copies of the host and the echo builds: the host runs its plugin
# checks through its own executable's path, so a rebuild of target/ during a run (another build
# on the same tree) would otherwise pull that path from under it.
snapshot="$(mktemp -d -t agent-host-soak-XXXXXX)"
trap 'rm -rf "$snapshot"' EXIT
cp target/debug/agent-host "$fixtures/echo-v1.so" "$fixtures/echo-v2.so" "$snapshot/"

if [[ "$what" == memory || "$what" == all ]]; then
    echo "==> row 2: memory across $reloads generations, then ${load_seconds}s of load"
    .venv/bin/python tests/soak/soak.py memory --host-exe "$snapshot/agent-host" \
        --v1 "$snapshot/echo-v1.so" --v2 "$snapshot/echo-v2.so" \
        --reloads "$reloads" --load-seconds "$load_seconds"
fi
if [[ "$what" == threads || "$what" == all ]]; then
    echo "==> row 15: thread count across ${2:-100} reloads"
    .venv/bin/python tests/soak/soak.py threads --host-exe target/debug/agent-host \
        --fixtures "$fixtures" --reloads "${2:-100}" --drain-deadline-ms 1000
fi
if [[ "$what" == reload || "$what" == all ]]; then
    profile="${RELOAD_PROFILE:-debug}"
    release=()
    if [[ "$profile" == release ]]; then
        # The test finds the host and the fixtures next to itself: build them in release too.
        release=(--release)
        rel="${CARGO_TARGET_DIR:-target}/release"
        cargo build --release --locked -p agent-host
        # echo on its own, as echo-v2 below is: built in one invocation with the host, echo
        # gets the host's tokio features, and the two versions would differ in more than that.
        cargo build --release --locked -p echo-plugin
        mkdir -p "$rel/fixtures"
        strip -o "$rel/fixtures/echo-v1.so" "$rel/libecho_plugin.so"
        AGENT_ECHO_VERSION=0.2.0 cargo rustc --release --locked -p echo-plugin --lib --crate-type cdylib
        strip -o "$rel/fixtures/echo-v2.so" "$rel/libecho_plugin.so"
        cargo build --release --locked -p echo-plugin
    fi
    echo "==> row 1: $reloads swaps at ${3:-500} RPC/s ($profile build)"
    RELOAD_SWAPS="$reloads" RELOAD_RPS="${3:-500}" RELOAD_BASELINE_SECS=30 RELOAD_MAX_P99_RATIO=2 \
        cargo test --locked "${release[@]}" -p agent-host-tests --test reload_under_load -- --nocapture
fi
if [[ "$what" == interop || "$what" == all ]]; then
    echo "==> row 14: a propeller-configured grpcio client over two hosts, ${2:-300}s"
    .venv/bin/python tests/soak/interop.py run --host-exe "$snapshot/agent-host" \
        --v1 "$snapshot/echo-v1.so" --v2 "$snapshot/echo-v2.so" --duration "${2:-300}"
fi
