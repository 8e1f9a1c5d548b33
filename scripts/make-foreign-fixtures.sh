#!/usr/bin/env bash
# Builds the "images made by other tools" fixtures into OUTDIR/foreign: volumes in the
# layouts other formatters and older systems leave behind, made with the real tools
# (mkfs.vfat, mke2fs, debugfs, sfdisk, mkswap, mkntfs) and, where a tool needs a kernel
# driver this machine lacks (md RAID, firmware RAID), written byte by byte from the
# on-disk formats and checked with blkid and mdadm --examine by the tests.
#
#   scripts/make-foreign-fixtures.sh [OUTDIR]      (default: fixtures/build)
#
# Kept apart from make-fixtures.sh, with its own stamp, so that changing these does not
# rebuild the Debian root. Every image is a small sparse file.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/fixtures/build}/foreign
mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp="$out/.stamp"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "foreign fixtures up to date in $out" >&2
  exit 0
fi

export PATH="$PATH:/usr/sbin:/sbin"
export E2FSPROGS_FAKE_TIME=1700000000 SOURCE_DATE_EPOCH=1700000000 TZ=UTC
MiB=$((1024 * 1024))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -f "$out"/*.img
bytes() { python3 -c "import random, sys; random.seed($2); sys.stdout.buffer.write(random.randbytes($1))"; }

# The content every filesystem here holds: a small file, one of several clusters or
# blocks, a long name, a subdirectory.
tree="$work/tree"
mkdir -p "$tree/etc" "$tree/sub dir"
echo "foreign-host" > "$tree/etc/hostname"
bytes 40000 201 > "$tree/sub dir/forty-thousand.bin"
echo "a long file name" > "$tree/A Long File Name.txt"
find "$tree" -exec touch -h -d @1700000000 {} +

# mkfat IMAGE SIZE_KIB MKFS_ARGS...: a FAT volume holding the tree, written by mtools.
mkfat() {
  local img=$1 kib=$2
  shift 2
  rm -f "$img"
  mkfs.vfat -C -i 0badf00d -n FOREIGN "$@" "$img" "$kib" >/dev/null
  mcopy -s -m -i "$img" "$tree/etc" "$tree/sub dir" "$tree/A Long File Name.txt" ::/
}
# A FAT32 this small keeps its total sectors in the 16-bit BPB field (mkfs.vfat does
# that below 65536 sectors), which strict readers refuse and Linux accepts. mtools
# cannot write to one (it takes a FAT with under 65525 clusters for FAT16), so the
# files go into a 40 MiB FAT32 first, which is then cut to the 30 MiB that mkfs.vfat
# would have made: the totals move to the 16-bit field in the boot sector and its
# backup, and the FSInfo free count becomes "unknown". fsck.vfat checks the result.
mkfat "$work/fat32-40m.img" $((40 * 1024)) -F 32 -s 1
cp "$work/fat32-40m.img" "$work/fat32-for-clusters.img"
python3 - "$work/fat32-40m.img" <<'PY'
import struct, sys
SECTORS = 30 * 2048
f = open(sys.argv[1], "r+b")
for boot in (0, 6):                              # the boot sector and its backup
    f.seek(boot * 512 + 19); f.write(struct.pack("<H", SECTORS))
    f.seek(boot * 512 + 32); f.write(struct.pack("<I", 0))
for fsinfo in (1, 7):
    f.seek(fsinfo * 512 + 488); f.write(struct.pack("<I", 0xffffffff))
f.truncate(SECTORS * 512)
PY
mv "$work/fat32-40m.img" "$out/fat32-small.img"
# Large logical sectors and clusters (-S, -s), and a tiny FAT12.
mkfat "$out/fat16-sector4k.img" $((64 * 1024)) -F 16 -S 4096 -s 2
mkfat "$out/fat12-tiny.img" 2048 -F 12 -s 8

# ext layouts the kernel reads and strict readers refuse.
mkfs.ext4 -q -F -I 128 -L inode128 -d "$tree" "$out/ext4-inode128.img" 8M
mkfs.ext2 -q -F -O ^filetype -L nofiletype -d "$tree" "$out/ext2-nofiletype.img" 8M
# An external journal: a jbd superblock, no files.
mke2fs -q -F -O journal_dev -b 4096 -L journal "$out/ext-journal-dev.img" 2048
# An ext4 with an encrypted directory. Setting the inode flag (EXT4_ENCRYPT_FL, with
# EXT4_EXTENTS_FL) is what a kernel with a key would leave; no key is needed to read
# the rest of the tree.
mkdir -p "$work/enc/locked"
echo "hidden" > "$work/enc/locked/inside.txt"
echo "visible" > "$work/enc/outside.txt"
cp -r "$tree/etc" "$work/enc/etc"
# For the coverage findings: a compressed log (a test lowers the decompression bound
# below its size) and a symbolic link loop.
head -c 200000 /dev/zero | gzip -n -9 > "$work/enc/zeros.log.gz"
ln -s loop-b "$work/enc/loop-a"; ln -s loop-a "$work/enc/loop-b"
mkfs.ext4 -q -F -O encrypt -L encrypted -d "$work/enc" "$out/ext4-encrypted-dir.img" 8M
debugfs -w -R "set_inode_field /locked flags 0x80800" "$out/ext4-encrypted-dir.img" 2>/dev/null

# An ext4 feature that Linux and every reader here refuse (dirdata, Lustre's), set
# with debugfs: the volume is recognised and must be reported as not read.
mkfs.ext4 -q -F -L dirdata -d "$tree" "$out/ext4-dirdata.img" 8M
debugfs -w -R "feature dirdata" "$out/ext4-dirdata.img" >/dev/null 2>&1

# One volume, two signatures: an ext2 (4 KiB blocks) and, over its boot block and
# some unused inode-table blocks, the boot sector and first MFT records of an NTFS
# that mkntfs made with 64 KiB clusters (its MFT then starts at byte 131072, inside
# the ext2's inode table, past the inodes in use). blkid -p calls it ambivalent.
truncate -s 16M "$work/ambiguous" "$work/ntfs"
mkfs.ext2 -q -F -b 4096 -L ambiguous -d "$tree" "$work/ambiguous"
mkntfs -q -F -Q -c 65536 "$work/ntfs" >/dev/null
dd if="$work/ntfs" of="$work/ambiguous" bs=512 count=1 conv=notrunc status=none
dd if="$work/ntfs" of="$work/ambiguous" bs=4096 skip=32 seek=32 count=4 conv=notrunc status=none
mv "$work/ambiguous" "$out/ambiguous-ntfs-ext2.img"

# MBR chains: a long one, one whose EBRs go backwards on the disk, and one with the
# entries of its EBRs in unusual slots. The tests compare each with sfdisk and mmls.
img="$out/mbr-long-chain.img"
truncate -s 64M "$img"
{
  echo "label: dos"
  echo "label-id: 0x0ddc4a1e"
  echo "start=2048, size=4MiB, type=83"
  echo "type=5"
  for _ in $(seq 1 11); do echo "size=3MiB, type=83"; done
} | sfdisk -q "$img"
img="$out/mbr-backwards-chain.img"
truncate -s 64M "$img"
sfdisk -q "$img" <<'EOF'
label: dos
label-id: 0x0ddc4a1f
start=2048, size=4MiB, type=83
start=10240, size=40MiB, type=5
start=71680, size=4MiB, type=83
start=51200, size=4MiB, type=83
start=30720, size=4MiB, type=83
start=12288, size=4MiB, type=82
EOF
cp --sparse=always "$out/mbr-long-chain.img" "$out/mbr-odd-slots.img"
# In the chain's second EBR the link comes first and the data second; in its third the
# data partition sits in slot 3.
python3 - "$out/mbr-odd-slots.img" <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
def sector(lba):
    f.seek(lba * 512)
    return bytearray(f.read(512))
def put(lba, s):
    f.seek(lba * 512)
    f.write(s)
mbr = sector(0)
ext = struct.unpack_from("<I", mbr, 446 + 16 + 8)[0]
ebrs = [ext]
while len(ebrs) < 3:
    e = sector(ebrs[-1])
    ebrs.append(ext + struct.unpack_from("<I", e, 446 + 16 + 8)[0])
e = sector(ebrs[1])
e[446:478] = e[462:478] + e[446:462]
put(ebrs[1], e)
e = sector(ebrs[2])
e[478:494], e[446:462] = e[446:462], bytes(16)
put(ebrs[2], e)
PY

# md RAID members, written as mdadm writes them (mdadm --create needs the md driver,
# which this machine has no device for): RAID1 members hold a whole ext4, read through
# their data area; a RAID5 member is named, not read.
mkfs.ext4 -q -F -L mirrored -U 5b1d0b4e-7e0e-4d8a-9c7e-0000000000a1 -d "$tree" "$work/inner" 16M
# md_member OUT VERSION LEVEL: md superblock around a copy of $work/inner.
md_member() {
  python3 - "$1" "$2" "$3" "$work/inner" <<'PY'
import struct, sys
out, version, level, inner = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(inner, "rb").read()
MAGIC = 0xa92b4efc
SIZE = 24 << 20
dev = bytearray(SIZE)
if version == "0.90":
    # The 4 KiB superblock in the last 64 KiB-aligned 64 KiB; data from byte 0.
    sb = bytearray(4096)
    struct.pack_into("<IIII", sb, 0, MAGIC, 0, 90, 0)
    struct.pack_into("<I", sb, 20, 0x1234abcd)          # set uuid word 0
    struct.pack_into("<III", sb, 24, 1700000000, level, len(data) // 1024)
    struct.pack_into("<II", sb, 36, 2, 2)               # nr_disks, raid_disks
    # The checksum (word 38): all 1024 words with it zeroed, summed and folded.
    total = sum(struct.unpack_from("<1024I", sb))
    csum = ((total & 0xffffffff) + (total >> 32)) & 0xffffffff
    struct.pack_into("<I", sb, 152, csum)
    at = ((SIZE & ~0xffff) - 0x10000)
    dev[0:len(data)] = data
    dev[at:at + 4096] = sb
else:
    # Version 1: 1.0 at the end (data from 0), 1.1 at 0 and 1.2 at 4 KiB (data
    # from 1 MiB).
    max_dev = 2
    sb = bytearray(256 + 2 * max_dev)
    sectors = SIZE // 512
    if version == "1.0":
        super_offset = (sectors - 16) & ~7
        data_offset = 0
    elif version == "1.1":
        super_offset = 0
        data_offset = 2048
    else:
        super_offset = 8
        data_offset = 2048
    struct.pack_into("<III", sb, 0, MAGIC, 1, 0)
    sb[16:32] = bytes(range(16))
    sb[32:40] = b"foreign\0"
    struct.pack_into("<QII", sb, 64, 1700000000, level, 2 if level == 5 else 0)
    struct.pack_into("<QII", sb, 80, len(data) // 512, 128 if level == 5 else 0, 3 if level == 5 else 2)
    struct.pack_into("<QQQ", sb, 128, data_offset, len(data) // 512, super_offset)
    struct.pack_into("<I", sb, 160, 0)
    sb[168:184] = bytes(range(16, 32))
    struct.pack_into("<QQQ", sb, 192, 1700000000, 1, 0xffffffffffffffff)
    struct.pack_into("<I", sb, 220, max_dev)
    struct.pack_into("<HH", sb, 256, 0, 1)
    words = struct.unpack_from("<%dI" % (len(sb) // 4), sb)
    total = sum(words)
    csum = ((total & 0xffffffff) + (total >> 32)) & 0xffffffff
    struct.pack_into("<I", sb, 216, csum)
    dev[super_offset * 512:super_offset * 512 + len(sb)] = sb
    dev[data_offset * 512:data_offset * 512 + len(data)] = data
open(out, "wb").write(dev)
PY
}
md_member "$out/md-0.90-raid1.img" 0.90 1
md_member "$out/md-1.0-raid1.img" 1.0 1
md_member "$out/md-1.1-raid1.img" 1.1 1
md_member "$out/md-1.2-raid1.img" 1.2 1
md_member "$out/md-1.2-raid5.img" 1.2 5

# Firmware RAID: an Intel Matrix Storage (isw) and a SNIA DDF member disk, each an MBR
# disk with an ext4 partition and the metadata where the option ROMs put it.
# fw_member OUT FORMAT
fw_member() {
  truncate -s 32M "$1"
  printf 'label: dos\nstart=2048, size=16MiB, type=83\n' | sfdisk -q "$1"
  dd if="$work/inner" of="$1" bs=1M seek=1 conv=notrunc,sparse status=none
  python3 - "$1" "$2" <<'PY'
import struct, sys
path, fmt = sys.argv[1], sys.argv[2]
f = open(path, "r+b")
size = f.seek(0, 2)
sectors = size // 512
if fmt == "isw":
    # The MPB starts two sectors before the end of the disk.
    mpb = bytearray(512)
    mpb[0:32] = b"Intel Raid ISM Cfg Sig. 1.0.00\0\0"
    struct.pack_into("<III", mpb, 32, 0, 480, 0xfeedf00d)  # check_sum, mpb_size, family
    f.seek((sectors - 2) * 512)
    f.write(mpb)
else:
    # The DDF anchor header in the last sector, the primary header at its LBA.
    h = bytearray(b"\xff" * 512)
    struct.pack_into(">I", h, 0, 0xde11de11)
    h[8:32] = b"foreign fixture DDF guid"
    h[32:40] = b"02.00.00"
    h[60] = 0x00                                           # anchor header
    primary = sectors - 64
    struct.pack_into(">QQ", h, 96, primary, 0xffffffffffffffff)
    struct.pack_into(">I", h, 4, 0xffffffff)
    # ul_crc32(seed 0) over the header with its crc field set to 0xffffffff.
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xedb88320 if c & 1 else c >> 1
        table.append(c)
    c = 0
    for b in bytes(h):
        c = table[(c ^ b) & 0xff] ^ (c >> 8)
    struct.pack_into(">I", h, 4, c)
    f.seek((sectors - 1) * 512)
    f.write(h)
    p = bytearray(h)
    p[60] = 0x01                                           # primary header
    f.seek(primary * 512)
    f.write(p)
PY
}
fw_member "$out/isw-member.img" isw
fw_member "$out/ddf-member.img" ddf

# Swap as a big-endian machine writes it: mkswap's header with its words byte-swapped,
# with 8 KiB pages (mkswap -p).
truncate -s 8M "$work/swap"
mkswap -q -p 8192 -U 6b1d0b4e-7e0e-4d8a-9c7e-0000000000b1 "$work/swap" >/dev/null
python3 - "$work/swap" "$out/swap-be-8k.img" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
for at in (1024, 1028, 1032):                  # version, last_page, nr_badpages
    (v,) = struct.unpack_from("<I", b, at)
    struct.pack_into(">I", b, at, v)
open(sys.argv[2], "wb").write(b)
PY

# Truncated copies, cut in the middle of /sub dir/forty-thousand.bin, so that the file
# lies partly past the end of the image. Where its data is comes from the tools:
# debugfs's bmap for ext, mtools' mshowfat for FAT (on the 40 MiB FAT32 above, whose
# clusters the 30 MiB one keeps).
for name in ext4-inode128 ext2-nofiletype; do
  block=$(debugfs -R "bmap \"/sub dir/forty-thousand.bin\" 4" "$out/$name.img" 2>/dev/null)
  bsize=$(dumpe2fs -h "$out/$name.img" 2>/dev/null | awk -F: '/^Block size/ {print $2 + 0}')
  head -c $((block * bsize)) "$out/$name.img" > "$out/$name-truncated.img"
done
cluster=$(mshowfat -i "$work/fat32-for-clusters.img" "::/sub dir/forty-thousand.bin" | grep -o '<[0-9]*' | head -1 | tr -d '<')
cut=$(python3 - "$out/fat32-small.img" "$cluster" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read(512)
per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", b, 11)
fat_sectors = struct.unpack_from("<I", b, 36)[0]
data = (reserved + fats * fat_sectors) * per_sector
print(data + (int(sys.argv[2]) - 2 + 20) * per_cluster * per_sector)
PY
)
head -c "$cut" "$out/fat32-small.img" > "$out/fat32-small-truncated.img"

echo "$want" > "$stamp"
ls -ls "$out" >&2
