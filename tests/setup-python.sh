#!/usr/bin/env bash
# Create (or refresh) the Python virtualenv used by the conformance tests.
#
#   tests/setup-python.sh          -> <repo>/.venv with tests/requirements-conformance.txt installed
#
# Idempotent: when <repo>/.venv already holds an install of the same requirements file
# (same sha256, same interpreter), nothing is reinstalled.
#
# Environment:
#   PYTHON       interpreter to build the venv from (default: python3.11 if found, else python3)
#   VENV_DIR     where to put the venv (default: <repo>/.venv)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQS="$REPO/tests/requirements-conformance.txt"
VENV_DIR="${VENV_DIR:-$REPO/.venv}"
STAMP="$VENV_DIR/.conformance-requirements.stamp"

log() { echo "setup-python: $*"; }

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null 2>&1; then
        echo python3.11
    else
        echo python3
    fi
}

PY="$(pick_python)"
if ! command -v "$PY" >/dev/null 2>&1; then
    log "error: interpreter '$PY' not found (set PYTHON=/path/to/python3)" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)'; then
    log "error: $("$PY" --version 2>&1) is too old; need Python >= 3.9" >&2
    exit 1
fi
PY_VERSION="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
PY_MINOR="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# The stamp records what was installed: the requirements file's hash and the base interpreter.
want_stamp="$(sha256sum "$REQS" | cut -d' ' -f1) python-$PY_VERSION"

venv_python_works() {
    [[ -x "$VENV_DIR/bin/python" ]] && "$VENV_DIR/bin/python" -c 'import sys' >/dev/null 2>&1
}

if venv_python_works && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$want_stamp" ]]; then
    log "$VENV_DIR is up to date with $(basename "$REQS") (python $PY_VERSION); nothing to do"
    exit 0
fi

make_venv() {
    local venv_err
    venv_err="$(mktemp)"
    log "creating virtualenv $VENV_DIR with $PY ($PY_VERSION)"
    if "$PY" -m venv "$VENV_DIR" 2>"$venv_err"; then
        rm -f "$venv_err"
        return 0
    fi
    local venv_msg
    venv_msg="$(cat "$venv_err")"
    rm -f "$venv_err"
    rm -rf "$VENV_DIR"
    # Debian ships the venv module's pip bootstrap separately (python3.X-venv).
    if "$PY" -m virtualenv --version >/dev/null 2>&1; then
        log "'$PY -m venv' failed; using virtualenv instead"
        "$PY" -m virtualenv -q "$VENV_DIR"
        return 0
    fi
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "'$PY -m venv' failed (no ensurepip); installing python$PY_MINOR-venv with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$PY_MINOR-venv" \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        "$PY" -m venv "$VENV_DIR"
        return 0
    fi
    echo "$venv_msg" >&2
    log "error: cannot create a virtualenv; install python$PY_MINOR-venv (Debian) or virtualenv" >&2
    exit 1
}

# Recreate from scratch when the venv is missing, broken, or built from another interpreter.
if venv_python_works; then
    have_version="$("$VENV_DIR/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
    if [[ "$have_version" != "$PY_VERSION" ]]; then
        log "existing venv uses python $have_version, want $PY_VERSION: recreating"
        rm -rf "$VENV_DIR"
    fi
else
    [[ -e "$VENV_DIR" ]] && { log "existing $VENV_DIR is unusable: recreating"; rm -rf "$VENV_DIR"; }
fi
[[ -d "$VENV_DIR" ]] || make_venv

rm -f "$STAMP"
log "installing $(grep -cvE '^\s*(#|$)' "$REQS") pinned packages from ${REQS#"$REPO"/}"
"$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$REQS"
"$VENV_DIR/bin/python" -m pip check --disable-pip-version-check

# Fail here, not in the tests, if the stubs the tests need cannot be imported.
"$VENV_DIR/bin/python" - <<'PYEOF'
import flyteidl.service.agent_pb2_grpc
import flyteidl2.connector.service_pb2_grpc
import grpc_health.v1.health_pb2_grpc
import grpc_reflection.v1alpha.reflection_pb2_grpc
import grpc_tools.protoc
import google.protobuf
import pytest
import yaml
print("setup-python: imports ok (protobuf %s)" % google.protobuf.__version__)
PYEOF

echo "$want_stamp" > "$STAMP"
log "done: $VENV_DIR (run tests with $VENV_DIR/bin/python -m pytest tests/conformance)"
