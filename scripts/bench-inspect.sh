#!/usr/bin/env bash
# Benchmark: `amiforge inspect` of a 20 GiB sparse GPT image whose 2 GiB ext4 root is
# full of files. inspect reads metadata and a few small files only, so its CPU time
# must stay well under one second whatever the image holds.
#
#   scripts/bench-inspect.sh [RUNS]       (default 5)
#
# Prints wall time, user+system CPU seconds and peak RSS for each run, then the
# medians. The image is built once under $BENCH_DIR (default target/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export PATH="$PATH:/usr/sbin:/sbin"
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
cargo build --release --locked --quiet
amiforge=${CARGO_TARGET_DIR:-$PWD/target}/release/amiforge
dir=${BENCH_DIR:-$PWD/target/bench}
img=$dir/inspect-20g.img
mkdir -p "$dir"

if [ ! -f "$img" ]; then
  work=$(mktemp -d "$dir/tree.XXXX")
  trap 'rm -rf "$work"' EXIT
  echo "building $img (about 1.7 GiB of files in a 2 GiB ext4)..." >&2
  root=$work/root
  mkdir -p "$root"/{etc,usr/bin,usr/lib,boot}
  cp /usr/lib/os-release "$root/usr/lib/os-release"; ln -s ../usr/lib/os-release "$root/etc/os-release"
  ln -s usr/bin "$root/bin"; ln -s usr/lib "$root/lib"
  cp /usr/bin/ls /usr/bin/env "$root/usr/bin/"
  mkdir -p "$root/usr/lib/modules/6.1.0-13-amd64" && echo "kernel/drivers/nvme/host/nvme.ko" > "$root/usr/lib/modules/6.1.0-13-amd64/modules.builtin"
  head -c 1000000 /dev/urandom > "$root/boot/vmlinuz-6.1.0-13-amd64"
  # 60,000 files in 600 directories, 1 byte to 60 KiB each: about 1.7 GiB.
  python3 - "$root/data" <<'PY'
import os, random, sys
random.seed(1)
blob = os.urandom(1 << 20)
base = sys.argv[1]
for d in range(600):
    p = os.path.join(base, f"d{d:03}", f"sub{d % 7}")
    os.makedirs(p, exist_ok=True)
    for f in range(100):
        n = random.randint(1, 60 * 1024)
        o = random.randint(0, len(blob) - n)
        with open(os.path.join(p, f"f{f:03}.bin"), "wb") as fh:
            fh.write(blob[o:o + n])
PY
  truncate -s 20G "$img.tmp"
  sgdisk -n 1:1M:+100M -t 1:EF00 -n 2:0:+2G -t 2:8304 "$img.tmp" >/dev/null
  mkfs.vfat -F 32 -s 1 --offset 2048 "$img.tmp" $((100 * 1024)) >/dev/null 2>&1
  mkfs.ext4 -q -F -E offset=$((101 * 1024 * 1024)) -d "$root" "$img.tmp" 2G
  mv "$img.tmp" "$img"
fi

"$amiforge" inspect "$img" >&2
# Wall and CPU time from the kernel's rusage of the child (microsecond resolution).
python3 - "$amiforge" "$img" "$runs" <<'PY'
import resource, statistics, subprocess, sys, time
amiforge, img, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(f"{'run':<4} {'wall_s':>10} {'cpu_s':>10} {'peak_rss_mib':>13}")
rows = []
for i in range(1, runs + 1):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([amiforge, "inspect", img, "--format", "json"], check=True, stdout=subprocess.DEVNULL, close_fds=False)  # posix_spawn: no forked Python in the RSS
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Peak RSS from GNU time, in a separate run so that its own cost stays out of the CPU figure.
    out = subprocess.run(["/usr/bin/time", "-f", "%M", amiforge, "inspect", img, "--format", "json"],
                         check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = int(out.stderr.strip().splitlines()[-1]) / 1024
    rows.append((wall, cpu, rss))
    print(f"{i:<4} {wall:>10.4f} {cpu:>10.4f} {rss:>13.1f}")
med = lambda k: statistics.median(r[k] for r in rows)
print(f"median: wall {med(0):.4f} s, cpu {med(1):.4f} s, peak RSS {max(r[2] for r in rows):.1f} MiB")
PY
