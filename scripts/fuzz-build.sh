#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/, outside the workspace) so that CI notices when
# they stop compiling. Installs cargo-fuzz when it is missing. Built without a
# sanitizer, which the stable toolchain allows; scripts/fuzz-run.sh runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
cd fuzz
cargo fuzz build -O --sanitizer none
