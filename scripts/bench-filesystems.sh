#!/usr/bin/env bash
# Benchmark: the same tree on ext4 (mkfs.ext4 -d), XFS (mkfs.xfs -p), btrfs
# (mkfs.btrfs --rootdir) and zstd-compressed btrfs; `amiforge inspect` and the whole
# `amiforge audit` of each, in alternating rounds, with each filesystem's audit
# throughput as a ratio of ext4's.
#
#   scripts/bench-filesystems.sh [TREE_MIB] [ROUNDS]     (default 2048 and 3)
#
# The tree is bench-audit.sh's (scripts/bench-tree.sh): log-like text, real ELF files
# and a planted secret per rule. Each image is 2.5 times the tree, sparse.
set -euo pipefail
cd "$(dirname "$0")/.."
tree_mib=${1:-2048}
rounds=${2:-3}
export PATH="$PATH:/usr/sbin:/sbin"
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
profile=${BENCH_PROFILE:-release}
cargo build --profile "$profile" --locked --quiet -p amiforge
target=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
dir=${BENCH_DIR:-$PWD/target/bench}/audit
tree=$(scripts/bench-tree.sh "$dir" "$tree_mib")
btrfs_progs=${AMIFORGE_TOOLS:-$HOME/.cache/amiforge/tools}/btrfs-progs
size_mib=$((tree_mib * 5 / 2 + 512))
for fs in ext4 xfs btrfs btrfs-zstd; do
  image=$dir/fs-$fs-${tree_mib}m.img
  [ -f "$image" ] && [ "$image" -nt "$tree.done" ] && continue
  echo "making $image (${size_mib} MiB, sparse)..." >&2
  rm -f "$image" && truncate -s "${size_mib}M" "$image"
  case $fs in
    ext4) mkfs.ext4 -q -F -d "$tree" "$image" ;;
    xfs) python3 scripts/xfs-protofile.py "$tree" > "$dir/tree.proto"
         mkfs.xfs -q -f -p "$dir/tree.proto" "$image" ;;
    btrfs) "$btrfs_progs/sbin/mkfs.btrfs" -q -f --rootdir "$tree" "$image" ;;
    btrfs-zstd) "$btrfs_progs/sbin/mkfs.btrfs" -q -f --rootdir "$tree" --compress zstd "$image" ;;
  esac
done
source scripts/bench-common.sh
sync
rows=()
for round in $(seq "$rounds"); do
  for fs in ext4 xfs btrfs btrfs-zstd; do
    image=$dir/fs-$fs-${tree_mib}m.img
    cat "$image" > /dev/null   # the page cache holds each image alike
    rows+=("$round $(measure "inspect-$fs" "$target/amiforge" inspect "$image" --format json)")
    rows+=("$round $(measure "audit-$fs" "$target/amiforge" audit "$image" --format json --fail-on none)")
  done
done
python3 - "$tree_mib" "$dir" "${rows[@]}" <<'PY'
import json, statistics, sys
mib, d, rows = float(sys.argv[1]), sys.argv[2], [r.split() for r in sys.argv[3:]]
runs = {}
for _, name, wall, cpu, rss in rows:
    runs.setdefault(name, []).append((float(wall), float(cpu), int(rss)))
print(f"\ntree: {mib:.0f} MiB; medians of {len(runs['audit-ext4'])} alternating rounds\n")
print("| run | wall s | CPU s | tree MiB/s | peak RSS MiB | secrets found | vs ext4 (MiB/s) |")
print("|---|---|---|---|---|---|---|")
base = mib / statistics.median(w for w, _, _ in runs["audit-ext4"])
for name, r in runs.items():
    wall, cpu = statistics.median(x[0] for x in r), statistics.median(x[1] for x in r)
    rss = max(x[2] for x in r) / 1024
    found, ratio, rate = "", "", ""
    if name.startswith("audit-"):
        report = json.load(open(f"{d}/{name}.stdout"))
        found = str(sum(1 for f in report["findings"] if f["category"] == "secret"))
        rate = f"{mib / wall:.1f}"
        ratio = f"{mib / wall / base:.2f}x"
    print(f"| {name} | {wall:.2f} | {cpu:.2f} | {rate} | {rss:.0f} | {found} | {ratio} |")
PY
