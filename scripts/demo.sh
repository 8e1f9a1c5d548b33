#!/usr/bin/env bash
# The main job, end to end, on a sample image: installs the tools, builds the sample
# images with real tools (sgdisk, mkfs.vfat, mkfs.ext4 -d), builds amiforge, and
# inspects the UEFI sample: partitions, filesystems, OS, architecture, boot mode,
# kernels and EC2 drivers. Then it lists and reads files inside the image.
#
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
fixtures=${AMIFORGE_FIXTURES:-$PWD/fixtures/build}
scripts/make-fixtures.sh "$fixtures"
cargo build --release --locked --quiet
amiforge=${CARGO_TARGET_DIR:-$PWD/target}/release/amiforge
image="$fixtures/gpt-uefi.img"

set -x
"$amiforge" inspect "$image"
"$amiforge" inspect "$image" --format json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["os"]["pretty_name"], r["architecture"], r["boot_mode"], r["drivers"])'
"$amiforge" ls "$image" /etc -l
"$amiforge" cat "$image" /etc/os-release
"$amiforge" ls "$image" /EFI/BOOT --partition 1 -l
