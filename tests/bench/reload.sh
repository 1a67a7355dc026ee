#!/usr/bin/env bash
# Reload benchmark (issue 3): time from publishing a plugin version by rename to the first call
# it serves (median/p99 over 100 swaps, with the default 300 ms quiet period and with none),
# and RSS growth per reload over 500 reloads. Release builds; echo stripped, as shipped.
#
#   bash tests/bench/reload.sh [SWAPS] [RSS_RELOADS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
target="${CARGO_TARGET_DIR:-target}/release"
out="$target/bench"
mkdir -p "$out"
cargo build --release --locked -p agent-host -p echo-plugin
strip -o "$out/echo-v1.so" "$target/libecho_plugin.so"
AGENT_ECHO_VERSION=0.2.0 cargo rustc --release --locked -p echo-plugin --lib --crate-type cdylib
strip -o "$out/echo-v2.so" "$target/libecho_plugin.so"
cargo build --release --locked -p echo-plugin
cargo build --release --locked -p agent-host-tests --bin bench-reload
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%d)"
"$target/bench-reload" "$target/agent-host" "$out/echo-v1.so" "$out/echo-v2.so" "${1:-100}" "${2:-500}"
