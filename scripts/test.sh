#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test in the workspace (cargo-nextest:
# one summary line for the whole run; the crates have no doctests).
# `.ci/run` calls exactly this. Run it from anywhere: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# One target directory outside the clone, so CI and fresh clones reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitalwatch-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# The real servers the tests talk to (Kafka-protocol broker, SMTP, SNS emulator,
# PostgreSQL, MariaDB): started here if they are not running.
bash scripts/services.sh

echo "== rustfmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "(cargo-nextest not installed: falling back to cargo test; install it with cargo install --locked cargo-nextest)"
  cargo test --workspace --locked
fi
