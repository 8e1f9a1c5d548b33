#!/usr/bin/env bash
# Benchmark: audit an image where it already lives. The 4 GiB ext4 image holding the
# tree of scripts/bench-tree.sh (the image bench-audit.sh makes) is audited from the
# local file, in place from S3, and in place from a snapshot on the strict EBS
# server; beside them, boto3's managed download (what `aws s3 cp` does: ranged GETs
# on 10 threads) of the same object alone, in one run.
#
# S3 is the project's own S3 test server (`ebs-testserver --s3`, objects in memory),
# not moto: moto reads the whole object for every ranged GET, so a 4 GiB object
# read in ranges takes it hours, whoever reads it. The object is put with boto3.
#
#   scripts/bench-sources.sh [TREE_MIB]     (default 2048)
#
# RUNS (default 3) rounds run each of the four once, in turn; the table shows every
# run and the medians, and the ratios are of the medians. The goal (issue 15): the
# audit straight from S3 finishes before the download of the object alone.
# Everything runs on loopback, so the network costs nothing here and what is
# compared is the work each side does; on a real link the download only gets slower.
set -euo pipefail
cd "$(dirname "$0")/.."
tree_mib=${1:-2048}
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
profile=${BENCH_PROFILE:-release}
# The same package set as bench-upload.sh, so both reuse one build.
cargo build --profile "$profile" --locked --quiet -p amiforge -p ebs-testserver
target=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
dir=${BENCH_DIR:-$PWD/target/bench}/audit
mkdir -p "$dir"
tree=$(scripts/bench-tree.sh "$dir" "$tree_mib")
image=$dir/image-4g.img
if [ ! -f "$image" ] || [ "$tree.done" -nt "$image" ]; then
  echo "making $image (4 GiB ext4 holding the tree)..." >&2
  rm -f "$image" && truncate -s 4G "$image"
  mkfs.ext4 -q -F -d "$tree" "$image"
fi
venv=${AMIFORGE_VENV:-$HOME/.cache/amiforge/venv}

. scripts/bench-common.sh
trap 'kill $s3_pid $server_pid 2>/dev/null || true' EXIT

"$target/ebs-testserver" --s3 > "$dir/s3.out" &
s3_pid=$!
for _ in $(seq 100); do grep -q listening "$dir/s3.out" 2>/dev/null && break; sleep 0.1; done
s3=$(sed -n 's/^listening on //p' "$dir/s3.out")
echo "putting the image into S3 with boto3..." >&2
"$venv/bin/python" -c '
import sys, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
s3.create_bucket(Bucket="images")
s3.upload_file(sys.argv[2], "images", "image.img", Config=TransferConfig(multipart_chunksize=64 << 20))' "$s3" "$image"

start_strict
echo "uploading the image to the strict server as a snapshot..." >&2
snapshot=$(AWS_ENDPOINT_URL=$endpoint "$target/amiforge" upload "$image" --no-progress --format json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["snapshot_id"])')

# boto3's managed download, as `aws s3 cp` does it.
fetch='import sys, boto3; boto3.client("s3", endpoint_url=sys.argv[1]).download_file("images", "image.img", sys.argv[2])'

sync
cat "$image" > /dev/null   # the local file is read from the page cache, as the S3 server's copy is (in memory)
results=()
for _ in $(seq "${RUNS:-3}"); do
  results+=("$(measure audit-local "$target/amiforge" audit "$image" --format json --fail-on none --no-progress)")
  results+=("$(AWS_ENDPOINT_URL=$s3 measure audit-s3 "$target/amiforge" audit s3://images/image.img --format json --fail-on none --no-progress)")
  results+=("$(AWS_ENDPOINT_URL=$endpoint measure audit-snapshot "$target/amiforge" audit "$snapshot" --format json --fail-on none --no-progress)")
  results+=("$(measure download-only "$venv/bin/python" -c "$fetch" "$s3" "$dir/downloaded.img")")
  rm -f "$dir/downloaded.img"
done
stop_server

printf '%s\n' "${results[@]}" | python3 -c "
import statistics, sys
runs = {}
for line in sys.stdin:
    name, wall, cpu, rss = line.split()
    runs.setdefault(name, []).append((float(wall), float(cpu), int(rss)))
print(f'image: 4 GiB ext4 holding a ${tree_mib} MiB tree; amiforge built with the $profile profile')
print(f\"{'run':<24}{'wall s':>9}{'cpu s':>9}{'peak RSS MiB':>14}\")
med = {}
for name, rs in runs.items():
    for i, (wall, cpu, rss) in enumerate(rs):
        print(f'{name + \" #\" + str(i + 1):<24}{wall:>9.2f}{cpu:>9.2f}{rss / 1024:>14.1f}')
    med[name] = tuple(statistics.median(r[k] for r in rs) for k in range(3))
    wall, cpu, rss = med[name]
    print(f'{name + \" median\":<24}{wall:>9.2f}{cpu:>9.2f}{rss / 1024:>14.1f}')
d = med['download-only'][0]
for name in ('audit-local', 'audit-s3', 'audit-snapshot'):
    print(f'{name} wall / download-only wall: x{med[name][0] / d:.2f}')
print('goal: audit-s3 / download-only below x1.00')
"
