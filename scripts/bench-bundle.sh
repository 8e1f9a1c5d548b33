#!/usr/bin/env bash
# Benchmark: bundle size and speed against zstd on the raw image, in one run.
#
#   scripts/bench-bundle.sh [SIZE_GIB] [DATA_MIB]     (default 4 and 1024)
#
# The image is a sparse ext4 volume holding DATA_MIB of files: log-like text and real
# ELF binaries from this machine (the mix bench-audit.sh uses). Targets: the bundle's
# blocks.zst no larger than `zstd -3` of the raw image, and `amiforge bundle` at least
# as fast as `zstd -T0 -3` of it. The bundle time is reported whole (audit, SBOM and
# blocks) and for the block packing alone (--fail-on none, audit config skipping all).
set -euo pipefail
cd "$(dirname "$0")/.."
size_gib=${1:-4}
data_mib=${2:-1024}
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
profile=${BENCH_PROFILE:-release}
cargo build --profile "$profile" --locked --quiet -p amiforge -p ebs-testserver
target=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
dir=${BENCH_DIR:-$PWD/target/bench}/bundle
mkdir -p "$dir"
image=$dir/image-${size_gib}g-${data_mib}m.img
if [ ! -f "$image" ]; then
  tree=$dir/tree && rm -rf "$tree" && mkdir -p "$tree"
  echo "writing $image: ${size_gib} GiB ext4 holding ${data_mib} MiB of files..." >&2
  python3 - "$tree" "$data_mib" <<'PY'
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
random.seed(13)
words = ("the server request client config value error warning info debug user session "
         "connect timeout retry cache index build deploy release version module kernel").split()
binaries = [os.path.join(d, n) for d in ("/usr/lib/x86_64-linux-gnu", "/usr/bin")
            for n in sorted(os.listdir(d))
            if os.path.isfile(os.path.join(d, n)) and not os.path.islink(os.path.join(d, n))
            and 50_000 < os.path.getsize(os.path.join(d, n)) < 8_000_000]
total, i = 0, 0
while total < mib << 20:
    sub = os.path.join(root, f"d{i % 50:02d}")
    os.makedirs(sub, exist_ok=True)
    if i % 2 == 0:
        lines = [f"2026-11-{random.randint(1, 28):02d} host{random.randint(1, 99)} "
                 f"{' '.join(random.choices(words, k=random.randint(4, 12)))} id={random.getrandbits(48):012x}\n"
                 for _ in range(random.randint(500, 20000))]
        data = "".join(lines).encode()
    else:
        data = open(binaries[i // 2 % len(binaries)], "rb").read()
    open(os.path.join(sub, f"f{i}"), "wb").write(data)
    total += len(data)
    i += 1
PY
  truncate -s "${size_gib}G" "$image.tmp"
  mkfs.ext4 -q -F -d "$tree" "$image.tmp"
  mv "$image.tmp" "$image"
  rm -rf "$tree"
fi
cat "$image" > /dev/null   # warm the page cache for every tool alike
skip_all=$dir/skip-all.toml
printf '[skip]\npaths = ["/**"]\n' > "$skip_all"

measure() {  # measure NAME COMMAND... -> "NAME wall cpu"
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$dir/time.out" "$@" > /dev/null 2> "$dir/$name.err" || {
    echo "$name failed:" >&2; tail -5 "$dir/$name.err" >&2; exit 2; }
  read -r wall user sys < <(tail -1 "$dir/time.out")
  echo "$name $wall $(python3 -c "print(round($user + $sys, 2))")"
}
rm -rf "$dir/b1" "$dir/b2" "$dir/raw.zst"
rows=()
rows+=("$(measure zstd-T0-3 zstd -q -T0 -3 -f "$image" -o "$dir/raw.zst")")
rows+=("$(measure amiforge-bundle "$target/amiforge" bundle "$image" --out "$dir/b1" --fail-on none --architecture x86_64 --boot-mode uefi)")
rows+=("$(measure amiforge-blocks-only "$target/amiforge" bundle "$image" --out "$dir/b2" --fail-on none --audit-config "$skip_all" --architecture x86_64 --boot-mode uefi)")
raw=$(stat -c %s "$dir/raw.zst")
ours=$(stat -c %s "$dir/b1/blocks.zst")
all=$(du -sb "$dir/b1" | cut -f1)
data=$(( $(du -k "$image" | cut -f1) * 1024 ))
python3 - "$raw" "$ours" "$all" "$data" "${rows[@]}" <<'PY'
import sys
raw, ours, total, data = map(int, sys.argv[1:5])
rows = [r.split() for r in sys.argv[5:]]
print(f"\nimage data (allocated): {data / 2**20:.0f} MiB")
print(f"| output | bytes | MiB |\n|---|---|---|")
print(f"| zstd -3 of the raw image | {raw} | {raw / 2**20:.1f} |")
print(f"| bundle blocks.zst | {ours} | {ours / 2**20:.1f} |")
print(f"| whole bundle directory | {total} | {total / 2**20:.1f} |")
print(f"size ratio blocks.zst / zstd -3: {ours / raw:.3f} (target <= 1)")
print(f"\n| command | wall s | cpu s |\n|---|---|---|")
for name, wall, cpu in rows:
    print(f"| {name} | {wall} | {cpu} |")
z = float(rows[0][1])
for name, wall, _ in rows[1:]:
    print(f"speed {name} vs zstd -T0 -3: {z / float(wall):.2f}x (target >= 1)")
PY
