#!/usr/bin/env bash
# The main job, end to end, on a sample image, with no AWS account:
#  1. installs the tools and builds the sample images with real tools (sgdisk,
#     mkfs.vfat, mkfs.ext4 -d);
#  2. inspects the UEFI sample: partitions, filesystems, OS, architecture, boot mode,
#     kernels, EC2 drivers; audits it (packages, secrets, hygiene, boot readiness),
#     writes its SBOM, and makes and verifies an air-gap bundle of it;
#  3. starts the strict EBS test server on loopback (EBS direct plus the EC2 calls it
#     needs) and publishes the image: audit → gate → upload into a snapshot →
#     RegisterImage with the architecture, boot mode and ENA the image implies;
#  4. verifies the AMI's snapshot block by block against the image, and shows that a
#     re-run returns the same AMI without uploading.
#
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
fixtures=${AMIFORGE_FIXTURES:-$PWD/fixtures/build}
scripts/make-fixtures.sh "$fixtures"
echo "building amiforge (the first build takes about 15 minutes on 2 cores)..." >&2
cargo build --locked --quiet -p amiforge -p ebs-testserver
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
image="$fixtures/gpt-uefi.img"

"$bin/ebs-testserver" > /tmp/amiforge-demo-server.$$ &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f /tmp/amiforge-demo-server.$$' EXIT
for _ in $(seq 100); do grep -q listening /tmp/amiforge-demo-server.$$ 2>/dev/null && break; sleep 0.1; done
endpoint=$(sed -n 's/^listening on //p' /tmp/amiforge-demo-server.$$)
# The test server checks SigV4 signatures against the secret key "testing".
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$endpoint
export AWS_EC2_METADATA_DISABLED=true

set -x
"$bin/amiforge" inspect "$image"
"$bin/amiforge" ls "$image" /etc -l
"$bin/amiforge" audit "$image"
"$bin/amiforge" sbom "$image" --format spdx-json --output /tmp/amiforge-demo-sbom.$$.json
rm -rf /tmp/amiforge-demo-bundle.$$
"$bin/amiforge" bundle "$image" --out /tmp/amiforge-demo-bundle.$$ --name amiforge-demo-bundle
"$bin/amiforge" bundle verify /tmp/amiforge-demo-bundle.$$
rm -rf /tmp/amiforge-demo-bundle.$$ /tmp/amiforge-demo-sbom.$$.json
"$bin/amiforge" publish "$image" --name "amiforge-demo" --tag demo=true --format json > /tmp/amiforge-demo-publish.$$
cat /tmp/amiforge-demo-publish.$$
snapshot=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_id"])' /tmp/amiforge-demo-publish.$$)
rm -f /tmp/amiforge-demo-publish.$$
"$bin/amiforge" verify "$image" "$snapshot"
"$bin/amiforge" publish "$image" --name "amiforge-demo"
