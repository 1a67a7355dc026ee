#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests (with the fixture
# plugins), and the conformance suites against the real Flyte client packages.
#
#   bash tests/run.sh
#
# Needs: the pinned Rust toolchain (rust-toolchain.toml, installed by rustup on first use) and
# python3 with pip/venv (the script creates .venv with the pinned Flyte packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the host, the plugins and the test fixtures"
bash tests/build-fixtures.sh

step "the plugin template and the guide's example, as an author builds them"
bash tests/template-check.sh

step "cargo test"
cargo test --workspace --locked --no-fail-fast

step "Python conformance suites (flyteidl==1.16.8, flyteidl2==2.0.53)"
bash tests/setup-python.sh
.venv/bin/python -m pytest -p no:cacheprovider -q tests/conformance

step "Differential suite: the webhook and sensor plugins against flytekit 1.16.31's own server"
cargo build --locked -p agent-host -p webhook-plugin -p sensor-plugin
bash tests/setup-flytekit.sh
.venv-flytekit/bin/python -m pytest -p no:cacheprovider -q tests/differential
