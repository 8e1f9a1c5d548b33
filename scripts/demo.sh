#!/usr/bin/env bash
# The main job, end to end, with no AWS account:
#  1. installs the tools and debootstraps a bootable Debian 12 root (the cloud kernel,
#     GRUB's modules, cloud-init, openssh-server);
#  2. builds it into a hybrid GPT disk (sysprep, GRUB for UEFI and BIOS, fstab by
#     UUID, the secret gate) and boots that disk in QEMU with OVMF and with SeaBIOS,
#     checking every step to cloud-init's user data;
#  3. inspects it: partitions, filesystems, OS, architecture, boot mode, kernels, EC2
#     drivers; audits it (packages, secrets, hygiene, boot readiness), writes its
#     SBOM, and makes and verifies an air-gap bundle of it;
#  4. starts the strict EBS test server on loopback (EBS direct plus the EC2 calls it
#     needs) and publishes the image: audit → gate → upload into a snapshot →
#     RegisterImage with the architecture, boot mode and ENA the image implies;
#  5. verifies the AMI's snapshot block by block against the image, and shows that a
#     re-run returns the same AMI without uploading.
#
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
fixtures=${AMIFORGE_FIXTURES:-$PWD/fixtures/build}
tree=$(scripts/make-boot-tree.sh "$fixtures")
echo "building amiforge (the first build takes about 15 minutes on 2 cores)..." >&2
cargo build --locked --quiet -p amiforge -p ebs-testserver
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
work=$(mktemp -d)
image="$work/debian.img"

"$bin/ebs-testserver" > "$work/server.out" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
endpoint=$(sed -n 's/^listening on //p' "$work/server.out")
# The test server checks SigV4 signatures against the secret key "testing".
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$endpoint
export AWS_EC2_METADATA_DISABLED=true

set -x
SOURCE_DATE_EPOCH=1700000000 "$bin/amiforge" build "$tree" -o "$image" --size 2G
"$bin/amiforge" boot-test "$image" --log "$work/serial.log"
"$bin/amiforge" inspect "$image"
"$bin/amiforge" ls "$image" /etc -l
"$bin/amiforge" audit "$image"
"$bin/amiforge" sbom "$image" --format spdx-json --output "$work/sbom.json"
"$bin/amiforge" bundle "$image" --out "$work/bundle" --name amiforge-demo-bundle
"$bin/amiforge" bundle verify "$work/bundle"
rm -rf "$work/bundle"
"$bin/amiforge" publish "$image" --name "amiforge-demo" --tag demo=true --format json > "$work/publish.json"
cat "$work/publish.json"
snapshot=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' "$work/publish.json")
rm -f "$work/publish.json"
"$bin/amiforge" verify "$image" "$snapshot"
"$bin/amiforge" publish "$image" --name "amiforge-demo"
