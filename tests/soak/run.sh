#!/usr/bin/env bash
# Soak runs of RELIABILITY.md (not part of CI: too long for the per-PR gate). Results go to
# tests/RELIABILITY-RESULTS.md by hand, with the date and the sizes used.
#
#   bash tests/soak/run.sh [memory|threads|reload|all] [RELOADS] [LOAD_SECONDS]
#
#   memory  row 2: RELOADS reloads of echo (default 1000), RSS per generation, then
#           LOAD_SECONDS (default 600) of constant load with no reloads (RSS must stay flat),
#           then loader.max_libraries reached: refused with a metric, host still up.
#   threads row 15: RELOADS reloads (default 100); the host's thread count back to its baseline
#           after each retire (each plugin version owns a tokio runtime, stopped at shutdown).
#   reload  row 1 at soak size is not automated yet: tests/tests/reload_under_load.rs runs the
#           CI size (200 swaps); its SWAPS constant is the knob.
#
# Not automated yet (see tests/RELIABILITY-RESULTS.md, "Left to do"): row 14 (two hosts behind
# a round_robin grpcio client, reload on one while the other gets SIGTERM), row 15's fixture that
# ignores shutdown() and a generations_leaked metric, row 17 (LeakSanitizer: needs a nightly
# toolchain for -Zsanitizer=leak on the host build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

what="${1:-all}"
reloads="${2:-1000}"
load_seconds="${3:-600}"

bash tests/build-fixtures.sh >/dev/null
bash tests/setup-python.sh >/dev/null
fixtures=target/debug/fixtures

if [[ "$what" == memory || "$what" == all ]]; then
    echo "==> row 2: memory across $reloads generations, then ${load_seconds}s of load"
    .venv/bin/python tests/soak/soak.py memory --host-exe target/debug/agent-host \
        --v1 "$fixtures/echo-v1.so" --v2 "$fixtures/echo-v2.so" \
        --reloads "$reloads" --load-seconds "$load_seconds"
fi
if [[ "$what" == threads || "$what" == all ]]; then
    echo "==> row 15: thread count across ${2:-100} reloads"
    .venv/bin/python tests/soak/soak.py threads --host-exe target/debug/agent-host \
        --v1 "$fixtures/echo-v1.so" --v2 "$fixtures/echo-v2.so" --reloads "${2:-100}"
fi
if [[ "$what" == reload || "$what" == all ]]; then
    echo "==> row 1 (CI size; raise SWAPS in tests/tests/reload_under_load.rs for the soak size)"
    cargo test --locked -p agent-host-tests --test reload_under_load -- --nocapture
fi
