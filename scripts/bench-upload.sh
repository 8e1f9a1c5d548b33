#!/usr/bin/env bash
# Benchmark: upload the same sparse 4 GiB image (about 50% data) with amiforge and
# with coldsnap, both against the strict EBS test server on loopback, in one run; then
# amiforge against moto. Reports wall time, CPU seconds (user+system), peak RSS and
# throughput for each, and the ratios.
#
#   scripts/bench-upload.sh [SIZE_GIB]     (default 4)
#
# RUNS (default 3) rounds each upload once with amiforge and once with coldsnap,
# alternating, each against a fresh server; the table shows every run and the
# medians, and the ratios are of the medians. This machine is noisy: read the ratios.
#
# coldsnap is installed from crates.io (cargo install coldsnap) into
# ~/.cache/amiforge/tools the first time. Both tools wait for the snapshot to be
# completed. coldsnap gets --omit-zero-blocks so that both skip zero blocks.
set -euo pipefail
cd "$(dirname "$0")/.."
size_gib=${1:-4}
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
tools=$HOME/.cache/amiforge/tools
if [ ! -x "$tools/bin/coldsnap" ]; then
  echo "installing coldsnap from crates.io (a few minutes)..." >&2
  cargo install coldsnap --locked --quiet --root "$tools"
fi
# BENCH_PROFILE=dev reuses the test build (dependencies at opt-level 2, our crates
# unoptimized): slower for amiforge, never faster, and it saves a 15-minute release build.
profile=${BENCH_PROFILE:-release}
cargo build --profile "$profile" --locked --quiet -p amiforge -p ebs-testserver
target=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
dir=${BENCH_DIR:-$PWD/target/bench}
mkdir -p "$dir"
img=$dir/upload-${size_gib}g.img
if [ ! -f "$img" ]; then
  echo "writing $img: ${size_gib} GiB, random data in about half of the 512 KiB blocks..." >&2
  python3 - "$img" "$size_gib" <<'PY'
import os, random, sys
path, gib = sys.argv[1], int(sys.argv[2])
random.seed(7)
block = 524288
with open(path + ".tmp", "wb") as f:
    f.truncate(gib << 30)
    pool = os.urandom(64 << 20)
    for i in range((gib << 30) // block):
        if random.random() < 0.5:
            off = random.randrange(0, len(pool) - block)
            f.seek(i * block)
            f.write(pool[off:off + block])
os.rename(path + ".tmp", path)
PY
fi
data_mib=$(( $(du -k "$img" | cut -f1) / 1024 ))

. scripts/bench-common.sh

results=()
for _ in $(seq "${RUNS:-3}"); do
  start_strict
  results+=("$(AWS_ENDPOINT_URL=$endpoint measure amiforge "$target/amiforge" upload "$img" --no-progress --workers 64)")
  stop_server
  start_strict
  results+=("$(AWS_ENDPOINT_URL=$endpoint measure coldsnap "$tools/bin/coldsnap" upload --wait --omit-zero-blocks "$img")")
  stop_server
done

venv=${AMIFORGE_VENV:-$HOME/.cache/amiforge/venv}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOTO_EC2_LOAD_DEFAULT_AMIS=false "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
results+=("$(AWS_ENDPOINT_URL=http://127.0.0.1:$port measure amiforge-vs-moto "$target/amiforge" upload "$img" --no-progress --workers 64)")
stop_server

printf '%s\n' "${results[@]}" | python3 -c "
import statistics, sys
data_mib = $data_mib
runs = {}
for line in sys.stdin:
    name, wall, cpu, rss = line.split()
    runs.setdefault(name, []).append((float(wall), float(cpu), int(rss)))
print(f'image: ${size_gib} GiB sparse, {data_mib} MiB of data; amiforge built with the $profile profile')
print(f\"{'tool':<22}{'wall s':>9}{'cpu s':>9}{'MiB/s':>9}{'cpu s/GiB':>11}{'peak RSS MiB':>14}\")
def row(name, wall, cpu, rss):
    print(f'{name:<22}{wall:>9.2f}{cpu:>9.2f}{data_mib / wall:>9.1f}{cpu / (data_mib / 1024):>11.2f}{rss / 1024:>14.1f}')
med = {}
for name, rs in runs.items():
    for i, r in enumerate(rs):
        row(f'{name} #{i + 1}' if len(rs) > 1 else name, *r)
    med[name] = tuple(statistics.median(r[k] for r in rs) for k in range(3))
    if len(rs) > 1:
        row(f'{name} median', *med[name])
a, c = med['amiforge'], med['coldsnap']
print(f'amiforge vs coldsnap (strict server, medians): throughput x{c[0] / a[0]:.2f}, cpu per GiB x{a[1] / c[1]:.2f}, peak RSS x{a[2] / c[2]:.2f}')
"
