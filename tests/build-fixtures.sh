#!/usr/bin/env bash
# Builds what the integration tests load: the host binary (it runs plugin checks in a child
# process), the example plugins, and the fixture plugins, one per failure mode. The fixtures
# end up in target/debug/fixtures/ under stable names:
#
#   good.so            a valid plugin (task type `good`)
#   good-abort.so      the same crate built with -C panic=abort (must be refused)
#   init-panic.so      an agent whose construction panics
#   init-error.so      an agent whose construction fails
#   not-a-plugin.so    a cdylib with no agent-host root module
#   layout-mismatch.so a root module under our symbol with another layout
#   abi-major.so       a plugin that claims ABI 2.x
#   echo-v1.so         the echo plugin, stripped (the reload tests map it hundreds of times)
#   echo-v2.so         echo built as version 0.2.0 (different content and answers), stripped
#   marker.so          a valid plugin whose ELF constructor appends to $AGENT_HOST_TEST_MARKER
#                      when mapped (shows a refused file was never mapped), stripped
#   hang-v1.so         task type `hang`: a call with custom {"hang": true} never returns
#   hang-v2.so         the same built as version 0.2.0
#   panic-in-call.so   task type `panic_in_call`: every Nth call panics
#   block-v1.so        task type `block`: a call with custom {"block_ms": N} blocks its thread
#   block-v2.so        the same built as version 0.2.0
#   threads-v1.so      task type `threads`: starts plugin-owned threads (one using the SDK
#                      runtime's handle, one with its own runtime) that stop at shutdown
#   threads-v2.so      the same built as version 0.2.0
#   leaky-v1.so        the same crate as plugin `leaky`: its threads ignore shutdown
#   leaky-v2.so        the same built as version 0.2.0
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --workspace --locked
target="${CARGO_TARGET_DIR:-target}/debug"
out="$target/fixtures"
mkdir -p "$out"
for name in good init-panic init-error not-a-plugin layout-mismatch abi-major; do
    cp "$target/libfixture_${name//-/_}.so" "$out/$name.so"
done
# The same crate as good.so, with panics that abort: only the final crate needs the flag.
cargo rustc --locked -p fixture-good --lib --crate-type cdylib -- -C panic=abort
cp "$target/libfixture_good.so" "$out/good-abort.so"
# Leave target/debug/libfixture_good.so as the unwind build for anyone who looks there.
cargo rustc --locked -p fixture-good --lib --crate-type cdylib
# Two echo builds with different content for the reload tests; stripped, since every reload
# maps a fresh copy that occupies disk until the test process ends.
strip -o "$out/echo-v1.so" "$target/libecho_plugin.so"
AGENT_ECHO_VERSION=0.2.0 cargo rustc --locked -p echo-plugin --lib --crate-type cdylib
strip -o "$out/echo-v2.so" "$target/libecho_plugin.so"
cargo build --locked -p echo-plugin
# Reliability fixtures (tests/tests/authenticity.rs, permissions.rs, faults.rs).
strip -o "$out/marker.so" "$target/libfixture_marker.so"
cp "$target/libfixture_panic_in_call.so" "$out/panic-in-call.so"
strip -o "$out/hang-v1.so" "$target/libfixture_hang.so"
AGENT_FIXTURE_VERSION=0.2.0 cargo rustc --locked -p fixture-hang --lib --crate-type cdylib
strip -o "$out/hang-v2.so" "$target/libfixture_hang.so"
cargo build --locked -p fixture-hang
# Row 5 (a call that blocks its thread) and row 15 (plugin-owned threads), two versions each.
strip -o "$out/block-v1.so" "$target/libfixture_block.so"
AGENT_FIXTURE_VERSION=0.2.0 cargo rustc --locked -p fixture-block --lib --crate-type cdylib
strip -o "$out/block-v2.so" "$target/libfixture_block.so"
cargo build --locked -p fixture-block
strip -o "$out/threads-v1.so" "$target/libfixture_threads.so"
AGENT_FIXTURE_VERSION=0.2.0 cargo rustc --locked -p fixture-threads --lib --crate-type cdylib
strip -o "$out/threads-v2.so" "$target/libfixture_threads.so"
AGENT_FIXTURE_LEAKY=1 cargo rustc --locked -p fixture-threads --lib --crate-type cdylib
strip -o "$out/leaky-v1.so" "$target/libfixture_threads.so"
AGENT_FIXTURE_LEAKY=1 AGENT_FIXTURE_VERSION=0.2.0 cargo rustc --locked -p fixture-threads --lib --crate-type cdylib
strip -o "$out/leaky-v2.so" "$target/libfixture_threads.so"
cargo build --locked -p fixture-threads
echo "fixtures in $out: $(ls "$out" | tr '\n' ' ')"
