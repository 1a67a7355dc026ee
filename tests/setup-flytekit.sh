#!/usr/bin/env bash
# Create (or refresh) the virtualenv of the differential tests: flytekit 1.16.31 with its
# connector server, beside (not in) the conformance venv, whose grpcio pins it conflicts with.
#
#   tests/setup-flytekit.sh        -> <repo>/.venv-flytekit
#
# Idempotent: nothing is reinstalled when the venv already holds the same requirements and
# constraints (same sha256) from the same interpreter. Cold: about 45-75 s (download and install of
# about 100 packages); warm: instant.
#
# Environment:
#   PYTHON     interpreter to build the venv from (default: python3.11 if found, else python3)
#   VENV_DIR   where to put the venv (default: <repo>/.venv-flytekit)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQS="$REPO/tests/differential/requirements.txt"
CONSTRAINTS="$REPO/tests/differential/constraints.txt"
VENV_DIR="${VENV_DIR:-$REPO/.venv-flytekit}"
STAMP="$VENV_DIR/.differential-requirements.stamp"

log() { echo "setup-flytekit: $*"; }

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
    PY=python3.11
else
    PY=python3
fi
command -v "$PY" >/dev/null 2>&1 || { log "error: interpreter '$PY' not found (set PYTHON=...)" >&2; exit 1; }
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || { log "error: $("$PY" --version 2>&1) is too old; need Python >= 3.9" >&2; exit 1; }
PY_VERSION="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
want_stamp="$(cat "$REQS" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1) python-$PY_VERSION"

venv_ok() { [[ -x "$VENV_DIR/bin/python" ]] && "$VENV_DIR/bin/python" -c 'import sys' >/dev/null 2>&1; }

if venv_ok && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$want_stamp" ]]; then
    log "$VENV_DIR is up to date (python $PY_VERSION); nothing to do"
    exit 0
fi

start=$(date +%s)
if venv_ok && [[ "$("$VENV_DIR/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" != "$PY_VERSION" ]]; then
    log "existing venv uses another python: recreating"
    rm -rf "$VENV_DIR"
fi
venv_ok || { rm -rf "$VENV_DIR"; log "creating $VENV_DIR with $PY ($PY_VERSION)"; "$PY" -m venv "$VENV_DIR"; }

rm -f "$STAMP"
# The constraints pin every package as resolved on Python 3.11; on another interpreter a pin may
# not exist, so fall back to resolving the requirements alone.
if ! "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$REQS" -c "$CONSTRAINTS"; then
    log "the pinned set does not install on python $PY_VERSION; resolving $(basename "$REQS") alone"
    "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$REQS"
fi
"$VENV_DIR/bin/python" -m pip check --disable-pip-version-check

"$VENV_DIR/bin/python" - <<'PYEOF'
import flytekit, httpx, msgpack, pytest
from flytekit.extend.backend.connector_service import AsyncConnectorService
from flytekit.extras.webhook import WebhookConnector
from flytekit.sensor.sensor_engine import SensorEngine
print("setup-flytekit: imports ok (flytekit %s, httpx %s)" % (flytekit.__version__, httpx.__version__))
PYEOF
[[ -x "$VENV_DIR/bin/pyflyte" ]] || { log "error: no pyflyte in $VENV_DIR/bin" >&2; exit 1; }

echo "$want_stamp" > "$STAMP"
log "done in $(( $(date +%s) - start )) s: $VENV_DIR (run: $VENV_DIR/bin/python -m pytest tests/differential)"
