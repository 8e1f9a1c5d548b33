#!/usr/bin/env bash
# Benchmark: uploads from disk containers against the raw upload and against
# converting first. On one sparse image (4 GiB, about 2 GiB of data), in one run and
# side by side: `qemu-img convert -O raw` of the qcow2 alone; amiforge `upload` of the
# raw image, of the qcow2 (uncompressed and zlib-compressed) and of the
# streamOptimized VMDK against the strict server; and a sequential read of the data
# of the qcow2 and of the raw image through the reader alone (the `read` rows, the
# diskimage example read_disk). Reports wall, CPU seconds, peak RSS and the ratios.
#
#   scripts/bench-formats.sh [SIZE_GIB]     (default 4; RUNS rounds, default 3)
#
# Goals (issue 11): an upload from an uncompressed qcow2 costs at most 1.15x the CPU
# of the raw upload, and every container upload finishes before `qemu-img convert`
# alone would; the reader reads an uncompressed qcow2 at >= 80% of the raw rate.
set -euo pipefail
cd "$(dirname "$0")/.."
size_gib=${1:-4}
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
profile=${BENCH_PROFILE:-release}
# The whole workspace, with its tests: the same features as the test build, so that
# BENCH_PROFILE=dev reuses it instead of rebuilding the AWS SDK.
cargo build --profile "$profile" --locked --quiet --workspace --all-targets
target=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
dir=${BENCH_DIR:-$PWD/target/bench}
mkdir -p "$dir"
img=$dir/formats-${size_gib}g.img
if [ ! -f "$img" ]; then
  echo "writing $img: ${size_gib} GiB, random data in about half of the 512 KiB blocks..." >&2
  python3 - "$img" "$size_gib" <<'PY'
import os, random, sys
path, gib = sys.argv[1], int(sys.argv[2])
random.seed(7)
block = 524288
with open(path + ".tmp", "wb") as f:
    f.truncate(gib << 30)
    # Half random (incompressible), half text-like (compressible), as real disks are.
    pool = os.urandom(32 << 20) + (b"amiforge benchmark line of text\n" * (1 << 20))
    for i in range((gib << 30) // block):
        if random.random() < 0.5:
            off = random.randrange(0, len(pool) - block)
            f.seek(i * block)
            f.write(pool[off:off + block])
os.rename(path + ".tmp", path)
PY
fi
for spec in "qcow2:-O qcow2" "zlib.qcow2:-c -O qcow2" "vmdk:-O vmdk -o subformat=streamOptimized"; do
  ext=${spec%%:*}; opts=${spec#*:}
  [ -f "$img.$ext" ] || qemu-img convert -f raw $opts "$img" "$img.$ext"
done
data_mib=$(( $(du -k "$img" | cut -f1) / 1024 ))

. scripts/bench-common.sh
upload() {
  local name=$1 file=$2
  start_strict
  AWS_ENDPOINT_URL=$endpoint measure "$name" "$target/amiforge" upload "$file" --no-progress --workers 64
  stop_server
}

results=()
for _ in $(seq "${RUNS:-3}"); do
  rm -f "$dir/converted.raw"
  results+=("$(measure qemu-img-convert qemu-img convert -O raw "$img.qcow2" "$dir/converted.raw")")
  rm -f "$dir/converted.raw"
  results+=("$(upload upload-raw "$img")")
  results+=("$(upload upload-qcow2 "$img.qcow2")")
  results+=("$(upload upload-qcow2-zlib "$img.zlib.qcow2")")
  results+=("$(upload upload-vmdk-stream "$img.vmdk")")
  results+=("$(measure read-raw "$target/examples/read_disk" "$img")")
  results+=("$(measure read-qcow2 "$target/examples/read_disk" "$img.qcow2")")
done

printf '%s\n' "${results[@]}" | python3 -c "
import statistics, sys
runs = {}
for line in sys.stdin:
    name, wall, cpu, rss = line.split()
    runs.setdefault(name, []).append((float(wall), float(cpu), int(rss)))
print(f'image: ${size_gib} GiB sparse, ${data_mib} MiB of data; amiforge built with the $profile profile')
print(f\"{'run':<24}{'wall s':>9}{'cpu s':>9}{'peak RSS MiB':>14}\")
med = {}
for name, rs in runs.items():
    med[name] = tuple(statistics.median(r[k] for r in rs) for k in range(3))
    print(f'{name:<24}{med[name][0]:>9.2f}{med[name][1]:>9.2f}{med[name][2] / 1024:>14.1f}   runs: ' + ', '.join(f'{r[0]:.2f}' for r in rs))
raw = med['upload-raw']
conv = med['qemu-img-convert']
for name in ['upload-qcow2', 'upload-qcow2-zlib', 'upload-vmdk-stream']:
    m = med[name]
    print(f'{name}: cpu x{m[1] / raw[1]:.2f} of the raw upload; wall x{m[0] / conv[0]:.2f} of qemu-img convert alone')
r, q = med['read-raw'], med['read-qcow2']
print(f'sequential read: qcow2 at {r[0] / q[0] * 100:.0f}% of the raw rate (wall), cpu x{q[1] / r[1]:.2f}')
"
