#!/usr/bin/env bash
# Checks the plugin template (plugin-api/template) the way a new author uses it: a crate of its
# own, outside the workspace, built against plugin-api by path. It formats, lints and tests the
# crate, builds its .so, and has the host check it and run one task through it. Then it does the
# same with the crate that plugin-api/GUIDE.md writes, taken from the guide's code blocks, so
# the guide cannot drift from the API.
#
#   bash tests/template-check.sh
#
# Needs the host binary (target/debug/agent-host: `cargo build -p agent-host`, which
# tests/build-fixtures.sh does). The template shares the workspace's target directory, so the
# compiled dependencies are reused where their features match.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

template=plugin-api/template
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
host="$CARGO_TARGET_DIR/debug/agent-host"

# The template pins the same toolchain as the host (plugins and host are built alike).
cmp rust-toolchain.toml "$template/rust-toolchain.toml"
# Resolve the template's dependencies to the versions the workspace is tested with.
cp Cargo.lock "$template/Cargo.lock"

cargo fmt --manifest-path "$template/Cargo.toml" -- --check
cargo clippy --manifest-path "$template/Cargo.toml" --all-targets -- -D warnings
cargo test --manifest-path "$template/Cargo.toml"
cargo build --manifest-path "$template/Cargo.toml"

plugin="$CARGO_TARGET_DIR/debug/libmy_agent.so"
"$host" check "$plugin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo '{"name": "Flyte"}' > "$work/inputs.json"
echo '{"custom": {"seconds": 0}}' > "$work/template.json"
AGENT_HOST__LOADER__WORK_DIR="$work/copies" "$host" exec "$plugin" --task-type my_job \
    --inputs "$work/inputs.json" --template "$work/template.json" --json > "$work/report.json"
grep -q '"outcome":"succeeded"' "$work/report.json"
grep -q '"greeting":"Hello, Flyte!"' "$work/report.json"
echo "template ok: $(cat "$work/report.json")"

# The guide's crate: Cargo.toml, src/lib.rs (two blocks) and tests/agents.rs, laid out as the
# guide says (next to an `agent-host` checkout).
guide="$work/guide/hello-agents"
mkdir -p "$guide/src" "$guide/tests"
ln -s "$PWD" "$work/guide/agent-host"
python3 - plugin-api/GUIDE.md "$guide" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
rust = [body for lang, body in blocks if lang == "rust"]
manifest = [body for lang, body in blocks if lang == "toml" and "[package]" in body]
assert len(rust) == 3 and len(manifest) == 1, "the guide's code blocks changed: update tests/template-check.sh"
open(sys.argv[2] + "/Cargo.toml", "w").write(manifest[0])
open(sys.argv[2] + "/src/lib.rs", "w").write(rust[0] + "\n" + rust[1])
open(sys.argv[2] + "/tests/agents.rs", "w").write(rust[2])
PY
cp Cargo.lock "$guide/Cargo.lock"
cargo test --manifest-path "$guide/Cargo.toml"
cargo build --manifest-path "$guide/Cargo.toml"
"$host" check "$CARGO_TARGET_DIR/debug/libhello_agents.so"
echo '{"text": "to be or not to be"}' > "$work/words.json"
AGENT_HOST__LOADER__WORK_DIR="$work/copies" "$host" exec "$CARGO_TARGET_DIR/debug/libhello_agents.so" \
    --task-type word_count --inputs "$work/words.json" --json > "$work/guide.json"
grep -q '"outputs":{"words":6}' "$work/guide.json"
echo "guide ok: $(cat "$work/guide.json")"
