#!/usr/bin/env bash
# Writes the benchmark tree (once; later calls reuse it) and prints its path: TREE_MIB
# MiB of log-like text and real ELF files, with a freshly planted secret for each
# amiforge rule (DIR/expected.json says where). bench-audit.sh and
# bench-filesystems.sh share it.
#
#   scripts/bench-tree.sh DIR TREE_MIB
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
tree_mib=$2
mkdir -p "$dir"
tree=$dir/tree-${tree_mib}m
if [ ! -f "$tree.done" ]; then
  rm -rf "$tree" "$dir/clean" && mkdir -p "$tree"
  echo "writing $tree: ${tree_mib} MiB of text and binary files, and the planted secrets..." >&2
  python3 tests/support/plant_secrets.py "$tree" "$dir/clean" "$dir/expected.json"
  python3 - "$tree" "$tree_mib" <<'PY'
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
random.seed(11)
words = ("the server request client config value error warning info debug user session "
         "connect timeout retry cache index build deploy release version module kernel "
         "network address port service daemon process thread memory disk volume").split()
binaries = []
for d in ("/usr/lib/x86_64-linux-gnu", "/usr/bin"):
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p) and 50_000 < os.path.getsize(p) < 8_000_000:
            binaries.append(p)
total, i = 0, 0
while total < mib << 20:
    sub = os.path.join(root, "data", f"d{i % 97:02d}")
    os.makedirs(sub, exist_ok=True)
    if i % 2 == 0:  # text: log-like lines
        n = random.randint(16 << 10, 2 << 20)
        lines, size = [], 0
        while size < n:
            l = (f"2026-11-{random.randint(1, 28):02d}T{random.randint(0, 23):02d}:00:00Z "
                 f"host{random.randint(1, 99)} {' '.join(random.choices(words, k=random.randint(4, 14)))} "
                 f"id={random.getrandbits(64):016x} n={random.randint(0, 10**6)}\n")
            lines.append(l)
            size += len(l)
        data = "".join(lines).encode()
        name = f"f{i}.log"
    else:  # binary: a real ELF file or library
        data = open(binaries[i // 2 % len(binaries)], "rb").read()
        name = f"f{i}.bin"
    with open(os.path.join(sub, name), "wb") as f:
        f.write(data)
    total += len(data)
    i += 1
PY
  touch "$tree.done"
fi
echo "$tree"
