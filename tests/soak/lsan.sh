#!/usr/bin/env bash
# RELIABILITY row 17 (soak tier): RELOADS reloads of echo (default 50) under a mixed load, with
# the host under LeakSanitizer; the leak check runs when the host exits after SIGTERM. Not part
# of CI. Results go to tests/RELIABILITY-RESULTS.md by hand.
#
#   bash tests/soak/lsan.sh [RELOADS] [--raw]
#
# Passes (exit 0) when the host exits 0, LeakSanitizer reports nothing, and the one entry of
# tests/soak/lsan.supp suppressed exactly one allocation per library the host mapped. --raw runs
# without the suppression file, to see (and count) everything LeakSanitizer finds; it then fails
# by design (LeakSanitizer's exit status 23) and prints the leaks grouped by origin.
#
# How, on a stable toolchain. LeakSanitizer needs no instrumentation: rustc's -Zsanitizer=leak
# (nightly only) just links LLVM's LeakSanitizer runtime into the executable, and that runtime
# ships with every toolchain, stable included (librustc-stable_rt.lsan.a in the target libdir).
# So this links it by hand into the host executable, and nowhere else: the runtime's malloc,
# free, pthread_create... are exported by the executable, so the plugins the host maps later
# allocate through it too. gcc's standalone liblsan.so.0 through LD_PRELOAD does not work for a
# Rust program: std calls signal() before the first malloc, and that runtime initialises itself
# only on its first malloc (or from the executable's .preinit_array, which a preload cannot
# add), so the interceptor jumps to a null "real signal" and the process dies at start.
#
# Frame pointers and debug info everywhere (host, plugins, dependencies) for whole, symbolised
# stacks; unstripped echo builds (~40 MB each: a run holds one private copy per generation, about
# 2 GB in the temp directory until the host exits). The host uses the system allocator (no jemalloc/mimalloc), and
# so does echo: every allocation goes through the runtime.
#
# The check child (`agent-host check --json`, the same executable) runs under the runtime too
# but reports nothing: it leaves with _exit, and the leak check runs only at exit(). The code it
# runs (map, describe, init, shutdown of the plugin) is the code the host runs in-process for
# every generation, which is checked. (log_path gives every process its own lsan.<pid> file;
# the driver fails if any process other than the host writes one.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

reloads=50
raw=0
for arg in "$@"; do
    case "$arg" in
        --raw) raw=1 ;;
        *) reloads="$arg" ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/lsan"
export RUSTFLAGS="-C force-frame-pointers=yes -g"
target="$CARGO_TARGET_DIR/debug"
out="$target/lsan-fixtures"
mkdir -p "$out"
runtime="$(rustc --print target-libdir)/librustc-stable_rt.lsan.a"
[[ -f "$runtime" ]] || { echo "no LeakSanitizer runtime at $runtime" >&2; exit 2; }

# Two echo builds with different content (and answers): 0.1.0 and 0.2.0, not stripped.
cargo build --locked -p echo-plugin
cp "$target/libecho_plugin.so" "$out/echo-v1.so"
AGENT_ECHO_VERSION=0.2.0 cargo rustc --locked -p echo-plugin --lib --crate-type cdylib
cp "$target/libecho_plugin.so" "$out/echo-v2.so"
# The host executable, with the runtime linked in whole (its interceptors must all be there).
cargo rustc --locked -p agent-host --bin agent-host -- \
    -C link-arg=-Wl,--whole-archive -C "link-arg=$runtime" -C link-arg=-Wl,--no-whole-archive
# (Not `nm | grep -q`: grep's early exit would fail the pipeline under pipefail.)
if ! nm -D --defined-only "$target/agent-host" | grep -w malloc >/dev/null; then
    echo "the host does not export the runtime's malloc: plugins would not allocate through it" >&2
    exit 2
fi

bash tests/setup-python.sh >/dev/null

logs="$target/lsan-logs/$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$logs"
options="log_path=$logs/lsan:report_objects=0:print_suppressions=1"
# Unwind with the DWARF unwinder, not the frame-pointer one: allocations made inside glibc
# (dlopen's own bookkeeping) and other code without frame pointers get whole stacks too.
options+=":fast_unwind_on_malloc=0:malloc_context_size=40"
# A plugin file that crashes the check child must kill it with the signal, as without the
# sanitizer (the host reports that as `crashed`).
options+=":handle_segv=0:handle_sigbus=0"
if command -v llvm-symbolizer >/dev/null; then
    options+=":external_symbolizer_path=$(command -v llvm-symbolizer)"
fi
clean=(--expect-clean)
if [[ "$raw" == 0 ]]; then
    options+=":suppressions=$PWD/tests/soak/lsan.supp"
else
    clean=()
fi
# Panics inside the plugin (the echo_panic calls) print a backtrace: the panic hook's capture
# and symbolisation is one more allocation path under the check, and the run is the same
# whatever the caller's environment says.
export RUST_BACKTRACE=1
echo "==> row 17: $reloads reloads under load, LeakSanitizer at exit (logs in $logs)"
echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%d); LSAN_OPTIONS=$options"
status=0
LSAN_OPTIONS="$options" .venv/bin/python tests/soak/lsan.py --host-exe "$target/agent-host" \
    --v1 "$out/echo-v1.so" --v2 "$out/echo-v2.so" --reloads "$reloads" --log-dir "$logs" "${clean[@]}" ||
    status=$?
exit "$status"
