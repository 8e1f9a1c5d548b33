#!/usr/bin/env bash
# Builds the XFS fixtures only a mounted filesystem can produce, with the Linux
# kernel's own XFS driver: the Debian boot tree's kernel (scripts/make-boot-tree.sh)
# is booted in QEMU straight into a script (`init=`) that mounts each image and
# works on it, then powers off. Nothing on the host is mounted.
#
#   scripts/make-kernel-fixtures.sh [OUTDIR]      (default: fixtures/build; writes
#                                                  OUTDIR/kernel-xfs)
#
# - xfs-reflink.img: a file and its reflinked clone (`cp --reflink=always`), one
#   64 KiB range of the clone rewritten (copy on write), and a deleted file whose
#   data, a planted AWS secret key, stays in free space.
# - xfs-sparse-inodes.img: free space cut into 16 KiB pieces (a file fallocated over
#   all of it, then holes punched), then files created until no inode can be: the
#   last inode chunks are sparse (the inode btree's hole masks say so).
# - xfs-dirty.img: files written and synced, and the machine powered off without
#   unmounting: the log holds changes not yet written back.
# xfs_db rdump writes the clean images' trees (of the second, its directory of
# files) out beside them, the independent account of what they hold. The filesystems are made by mkfs.xfs (the xfsprogs of
# install-deps.sh) with Linux 6.1 LTS's features, which the boot tree's kernel mounts.
#
# Its own stamp: this script and the boot tree's package list.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
fixtures=${1:-$here/fixtures/build}
out=$fixtures/kernel-xfs
tree=$("$here/scripts/make-boot-tree.sh" "$fixtures")
xfs_progs=${AMIFORGE_TOOLS:-$HOME/.cache/amiforge/tools}/xfsprogs/bin
mkdir -p "$out"
stamp="$out/.stamp"
want=$(cat "$0" "$tree.done" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "kernel fixtures up to date in $out" >&2
  exit 0
fi
rm -rf "${out:?}"/*
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
features=(-m crc=1,finobt=1,inobtcount=1,bigtime=1,rmapbt=0,metadir=0,autofsck=0
          -i sparse=1,nrext64=0,exchange=0 -n parent=0)

# A tree for the reflink image, so that inspect finds an OS there.
small="$work/small"
mkdir -p "$small"/{etc,usr/lib}
printf 'NAME="Amazon Linux"\nID="amzn"\nVERSION_ID="2023"\nPRETTY_NAME="Amazon Linux 2023"\n' > "$small/usr/lib/os-release"
ln -s ../usr/lib/os-release "$small/etc/os-release"
for name in reflink sparse-inodes dirty; do truncate -s 320M "$out/xfs-$name.img"; done
"$xfs_progs/mkfs.xfs" -q -f "${features[@]}" -m reflink=1,uuid=4b1d0000-0000-4000-8000-000000000020 \
  -p "$small" "$out/xfs-reflink.img"
# Without reflink's per-AG reservation, which inode chunks could otherwise take whole.
"$xfs_progs/mkfs.xfs" -q -f "${features[@]}" -m reflink=0,uuid=4b1d0000-0000-4000-8000-000000000021 \
  "$out/xfs-sparse-inodes.img"
"$xfs_progs/mkfs.xfs" -q -f "${features[@]}" -m reflink=1,uuid=4b1d0000-0000-4000-8000-000000000022 \
  "$out/xfs-dirty.img"

cat > "$work/fixture.sh" <<'EOF'
#!/bin/sh
# Runs as init in the fixture machine: /dev/vdb, vdc and vdd are the three images.
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
say() { echo "fixture: $*" > /dev/ttyS0; }
fail() { say "FAILED: $*"; echo o > /proc/sysrq-trigger; sleep 60; }
modprobe xfs || fail "modprobe xfs"
mkdir -p /run/a /run/b /run/c
mount -t xfs /dev/vdb /run/a || fail "mount reflink"
mount -t xfs /dev/vdc /run/b || fail "mount sparse-inodes"
mount -t xfs /dev/vdd /run/c || fail "mount dirty"
python3 - <<'PY' > /dev/ttyS0 2>&1 || fail "python"
import ctypes, os, random
random.seed(20231114)
libc = ctypes.CDLL(None, use_errno=True)
KEEP_SIZE, PUNCH_HOLE = 0x01, 0x02
BLOCK = 4096

# Reflink: a clone sharing its extents, one range rewritten; then a deleted secret.
os.chdir("/run/a")
os.makedirs("data")
with open("data/source.bin", "wb") as f:
    f.write(random.randbytes(4 << 20))
if os.system("cp --reflink=always data/source.bin data/clone.bin") != 0:
    raise SystemExit("cp --reflink failed")
with open("data/clone.bin", "r+b") as f:
    f.seek(640 << 10)
    f.write(random.randbytes(64 << 10))
with open("data/deleted.txt", "w") as f:
    f.write("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9Kq3VtQb\n" * 64)
    f.flush()
    os.fsync(f.fileno())
os.unlink("data/deleted.txt")

# Sparse inodes: all free space taken, every other 16 KiB given back, then inodes
# until there is no room for one more.
os.chdir("/run/b")
fd = os.open("filler", os.O_CREAT | os.O_WRONLY, 0o644)
size, step = 0, 64 << 20
while step >= BLOCK:
    if libc.fallocate(fd, 0, ctypes.c_long(size), ctypes.c_long(step)) == 0:
        size += step
    else:
        step //= 2
for at in range(0, size, 8 * BLOCK):
    libc.fallocate(fd, KEEP_SIZE | PUNCH_HOLE, ctypes.c_long(at), ctypes.c_long(4 * BLOCK))
os.fsync(fd)
os.close(fd)
os.mkdir("many")
made = 0
try:
    while True:
        with open("many/f%05d" % made, "w") as f:
            f.write("inode %d\n" % made if made % 1000 == 0 else "")
        made += 1
except OSError as e:
    print("fixture: %d files, then %s" % (made, e))

# Dirty: written and synced, more written, and no unmount.
os.chdir("/run/c")
with open("synced.txt", "w") as f:
    f.write("written before the sync\n")
os.sync()
with open("after-sync.txt", "w") as f:
    f.write("written after it\n")
os.sync()
PY
umount /run/a || fail "umount reflink"
umount /run/b || fail "umount sparse-inodes"
say "done"
echo o > /proc/sysrq-trigger
sleep 60
EOF
chmod +x "$work/fixture.sh"
kernel=$(ls "$tree"/boot/vmlinuz-* | sort -V | tail -1)
initrd="$tree/boot/initrd.img-${kernel##*/vmlinuz-}"
# The machine's root: the boot tree as an ext4 image, the script written in by debugfs.
truncate -s 2G "$work/root.ext4"
mkfs.ext4 -q -F -d "$tree" "$work/root.ext4"
debugfs -w -R "write $work/fixture.sh fixture.sh" "$work/root.ext4" >/dev/null 2>&1
debugfs -w -R "set_inode_field /fixture.sh mode 0100755" "$work/root.ext4" >/dev/null 2>&1
# Software emulation: some hosts' KVM stops such a guest with an internal error.
echo "making the kernel XFS fixtures in QEMU (about a minute)..." >&2
timeout 900 qemu-system-x86_64 -machine q35,accel=tcg -m 1024 -smp 2 \
  -kernel "$kernel" -initrd "$initrd" \
  -append "root=/dev/vda rw console=ttyS0 init=/fixture.sh panic=-1" \
  -drive "file=$work/root.ext4,if=virtio,format=raw" \
  -drive "file=$out/xfs-reflink.img,if=virtio,format=raw" \
  -drive "file=$out/xfs-sparse-inodes.img,if=virtio,format=raw" \
  -drive "file=$out/xfs-dirty.img,if=virtio,format=raw" \
  -display none -serial "file:$work/serial.log" -no-reboot -nodefaults
grep -a "^fixture:" "$work/serial.log" >&2 || true
if ! grep -aq "^fixture: done" "$work/serial.log" || grep -aq "^fixture: FAILED" "$work/serial.log"; then
  tail -30 "$work/serial.log" >&2
  exit 2
fi
mkdir -p "$out/xfs-reflink.rdump" "$out/xfs-sparse-inodes.rdump"
"$xfs_progs/xfs_db" -r -c "rdump / $out/xfs-reflink.rdump" "$out/xfs-reflink.img" 2>/dev/null
# Only the directory of small files: the filler is 240 MiB.
"$xfs_progs/xfs_db" -r -c "rdump /many $out/xfs-sparse-inodes.rdump" "$out/xfs-sparse-inodes.img" 2>/dev/null
echo "$want" > "$stamp"
