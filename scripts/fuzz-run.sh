#!/usr/bin/env bash
# Runs one fuzz target for a while, with AddressSanitizer, from a seed corpus of small
# real filesystems and disks made with mkfs and sgdisk.
#
#   scripts/fuzz-run.sh partition_table|filesystem_walk|inspect_image|disk_container|lvm_metadata|sparse_filesystem [SECONDS]
#
# AddressSanitizer needs unstable compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1
seconds=${2:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export PATH="$PATH:/usr/sbin:/sbin"
corpus=fuzz/corpus/$target
mkdir -p "$corpus"
if [ -z "$(ls -A "$corpus")" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/tree/dir/sub" && echo hello > "$tmp/tree/dir/sub/file" && ln -s dir/sub "$tmp/tree/link"
  truncate -s 256K "$tmp/ext4" && mkfs.ext4 -q -F -b 1024 -N 32 -O ^has_journal -d "$tmp/tree" "$tmp/ext4"
  truncate -s 256K "$tmp/ext2" && mkfs.ext2 -q -F -b 1024 -N 16 -d "$tmp/tree" "$tmp/ext2"
  truncate -s 256K "$tmp/fat12" && mkfs.vfat -n SEED "$tmp/fat12" >/dev/null && mcopy -s -i "$tmp/fat12" "$tmp/tree/dir" ::/
  truncate -s 64K "$tmp/gpt" && sgdisk -n 1:34:+16 -n 2:0:+16 "$tmp/gpt" >/dev/null
  truncate -s 64K "$tmp/mbr" && printf 'label: dos\nstart=1, size=8, type=83\nstart=10, size=40, type=5\nstart=12, size=4, type=83\n' | sfdisk -q "$tmp/mbr"
  cp "$tmp"/ext4 "$tmp"/ext2 "$tmp"/fat12 "$tmp"/gpt "$tmp"/mbr "$corpus/"
  if [ "$target" = lvm_metadata ]; then
    # The metadata of a real VG, and the first MiB of a real PV.
    rm -f "$corpus"/*
    truncate -s 16M "$tmp/pv" && l=$(losetup -f --show "$tmp/pv")
    conf='devices { filter=["a|^/dev/loop|","r|.*|"] use_devicesfile=0 } backup { backup=0 archive=0 }'
    pvcreate -q --config "$conf" -ff -y "$l" && vgcreate -q --config "$conf" -s 1M fuzzvg "$l"
    vgcfgbackup -q --config "$conf" -f "$corpus/seed-metadata" fuzzvg
    head -c 1M "$tmp/pv" > "$corpus/seed-pv"
    vgremove -q -f --config "$conf" fuzzvg || true
    losetup -d "$l"
  fi
  if [ "$target" = disk_container ]; then
    # Small containers of every format, from the GPT seed with some data in it.
    rm -f "$corpus"/*
    truncate -s 1M "$tmp/disk" && sgdisk -n 1:34:+16 "$tmp/disk" >/dev/null
    head -c 200000 /dev/urandom | dd of="$tmp/disk" bs=1 seek=300000 conv=notrunc status=none
    for spec in "qcow2 -o cluster_size=4096" "qcow2 -c -o cluster_size=4096" \
        "qcow2 -c -o compression_type=zstd,cluster_size=4096" "qcow2 -o extended_l2=on,cluster_size=16384" \
        "qcow2 -o compat=0.10,cluster_size=4096" "vmdk" "vmdk -o subformat=streamOptimized" \
        "vpc" "vpc -o subformat=fixed" "vhdx"; do
      set -- $spec
      qemu-img convert -f raw -O "$@" "$tmp/disk" "$corpus/seed-$(echo "$spec" | tr -c 'a-z0-9' '-')"
    done
  fi
  if [ "$target" = sparse_filesystem ]; then
    # Real XFS (v5, v4) and btrfs (uncompressed, zlib, LZO, zstd, a subvolume)
    # volumes in the target's sparse form: only their non-zero 4 KiB blocks, and not
    # XFS's log, which nothing reads.
    rm -f "$corpus"/*
    btrfs_progs=${AMIFORGE_TOOLS:-$HOME/.cache/amiforge/tools}/btrfs-progs
    mkdir -p "$tmp/tree/many" && for i in $(seq 300); do echo "$i" > "$tmp/tree/many/entry-$i"; done
    seq 1 10000 > "$tmp/tree/numbers" && head -c 60000 /dev/urandom > "$tmp/tree/random"
    printf '/dev/null\n0 0\nd--755 0 0\ndir d--755 0 0\nfile ---644 0 0 %s\nlink l--777 0 0 dir\n$\n$\n' "$tmp/tree/numbers" > "$tmp/proto"
    truncate -s 300M "$tmp/xfs5" && mkfs.xfs -q -f -p "$tmp/proto" "$tmp/xfs5"
    truncate -s 300M "$tmp/xfs4" && mkfs.xfs -q -f -m crc=0 -p "$tmp/proto" "$tmp/xfs4" 2>/dev/null
    for c in no zlib lzo zstd; do
      truncate -s 128M "$tmp/btrfs-$c"
      "$btrfs_progs/sbin/mkfs.btrfs" -q -f --rootdir "$tmp/tree" --compress "$c" -u rw:many "$tmp/btrfs-$c"
    done
    python3 - "$corpus" "$tmp"/xfs5 "$tmp"/xfs4 "$tmp"/btrfs-* <<'PY'
import os, struct, sys
corpus, images = sys.argv[1], sys.argv[2:]
for path in images:
    size = os.path.getsize(path)
    skip = range(0)
    with open(path, "rb") as f:
        sb = f.read(4096)
        if sb[:4] == b"XFSB":  # the log: an fsblock number (AG, block in AG) and a length
            block, agblocks, agblklog = struct.unpack(">I", sb[4:8])[0], struct.unpack(">I", sb[84:88])[0], sb[124]
            start = struct.unpack(">Q", sb[48:56])[0]
            first = ((start >> agblklog) * agblocks + (start & ((1 << agblklog) - 1))) * block // 4096
            skip = range(first, first + struct.unpack(">I", sb[96:100])[0] * block // 4096)
        out = [struct.pack("<I", size // 4096)]
        f.seek(0)
        for n in range(size // 4096):
            b = f.read(4096)
            if n not in skip and b.count(0) != 4096:
                out.append(struct.pack("<I", n) + b)
    open(os.path.join(corpus, "seed-" + os.path.basename(path)), "wb").write(b"".join(out))
PY
  fi
fi
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=1048576 -timeout=10 -rss_limit_mb=2048
