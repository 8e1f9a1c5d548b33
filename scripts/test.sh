#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the tools, builds the fixture
# images, checks formatting and lints, runs every test, and builds the fuzz targets.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
export AMIFORGE_VENV=${AMIFORGE_VENV:-$HOME/.cache/amiforge/venv}
export AMIFORGE_FIXTURES=${AMIFORGE_FIXTURES:-$PWD/fixtures/build}
scripts/make-fixtures.sh "$AMIFORGE_FIXTURES"
scripts/make-foreign-fixtures.sh "$AMIFORGE_FIXTURES"
scripts/make-volume-fixtures.sh "$AMIFORGE_FIXTURES"
scripts/make-package-fixtures.sh "$AMIFORGE_FIXTURES"
scripts/make-boot-tree.sh "$AMIFORGE_FIXTURES" >/dev/null
scripts/make-boot-tree.sh "$AMIFORGE_FIXTURES" arm64 >/dev/null
scripts/make-kernel-fixtures.sh "$AMIFORGE_FIXTURES"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/fuzz-build.sh
echo "all tests passed" >&2
