#!/usr/bin/env bash
# Prepares the side-by-side benchmark (tests/bench/compare.sh):
#   * h2load (Debian's nghttp2-client), the load generator;
#   * <repo>/.venv-bench: flytekit[connector]==1.16.31 (its `pyflyte serve connector` is the server compared
#     against; its flyteidl stubs build the request bodies; grpcio checks every grpc-status).
# flytekit's grpcio pins conflict with the conformance venv (.venv), hence a venv of its own.
# Idempotent: a venv that already imports flytekit 1.16.31 is kept.
#
#   bash tests/bench/setup.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_DIR="${BENCH_VENV:-$REPO/.venv-bench}"
FLYTEKIT_VERSION=1.16.31

if ! command -v h2load >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client
    else
        echo "setup: h2load missing; install Debian's nghttp2-client (as root: apt-get install -y nghttp2-client)" >&2
        exit 1
    fi
fi

PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ -x "$VENV_DIR/bin/python" ]] && "$VENV_DIR/bin/python" -c "import flytekit, grpc_health, prometheus_client, httpx, sys; sys.exit(flytekit.__version__ != '$FLYTEKIT_VERSION')" 2>/dev/null; then
    echo "setup: $VENV_DIR already has flytekit $FLYTEKIT_VERSION"
else
    "$PY" -m venv "$VENV_DIR"
    "$VENV_DIR/bin/pip" install -q --upgrade pip
    "$VENV_DIR/bin/pip" install -q "flytekit[connector]==$FLYTEKIT_VERSION"
fi
"$VENV_DIR/bin/python" -c "import flytekit, grpc, grpc_health, flyteidl; print('setup: flytekit', flytekit.__version__, 'grpcio', grpc.__version__)"
h2load --version | head -1
