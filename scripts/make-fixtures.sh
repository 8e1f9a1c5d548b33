#!/usr/bin/env bash
# Builds the test disk images with real tools: no root mounts, no loop devices.
#
#   scripts/make-fixtures.sh [OUTDIR]      (default: fixtures/build)
#
# Every image is a sparse file. Times, UUIDs and hash seeds are fixed so that the
# images are reproducible. The script is idempotent: a stamp holding the hash of this
# script skips the work when nothing changed.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/fixtures/build}
mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp="$out/.stamp"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "fixtures up to date in $out" >&2
  exit 0
fi

export PATH="$PATH:/usr/sbin:/sbin"
export E2FSPROGS_FAKE_TIME=1700000000 SOURCE_DATE_EPOCH=1700000000 TZ=UTC
MiB=$((1024 * 1024))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# bytes N SEED: N pseudo-random bytes, the same for the same seed on every run.
bytes() { python3 -c "import random, sys; random.seed($2); sys.stdout.buffer.write(random.randbytes($1))"; }

# --- The content of every root filesystem -------------------------------------------
root="$work/root"
mkdir -p "$root"/{etc,usr/bin,usr/lib,boot,var/log,home/user,data}
cp /usr/lib/os-release "$root/usr/lib/os-release"       # a real os-release
ln -s ../usr/lib/os-release "$root/etc/os-release"
ln -s usr/bin "$root/bin"                               # a merged /usr
ln -s usr/lib "$root/lib"
for b in ls true env; do cp "/usr/bin/$b" "$root/usr/bin/$b"; done   # real ELF binaries
echo "fixture-host" > "$root/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n' > "$root/etc/passwd"
kver=6.1.0-13-amd64
bytes 300000 101 > "$root/boot/vmlinuz-$kver"
mods="$root/usr/lib/modules/$kver"
mkdir -p "$mods/kernel/drivers/net/ethernet/amazon/ena"
bytes 4096 102 > "$mods/kernel/drivers/net/ethernet/amazon/ena/ena.ko"
printf 'kernel/drivers/nvme/host/nvme-core.ko\nkernel/drivers/nvme/host/nvme.ko\n' > "$mods/modules.builtin"
printf 'kernel/drivers/net/ethernet/amazon/ena/ena.ko:\n' > "$mods/modules.dep"
mkdir -p "$root/a/b/c/d/e/f/g/h"
echo "deep" > "$root/a/b/c/d/e/f/g/h/deep.txt"
ln -s a/b "$root/link-relative"
ln -s /etc/hostname "$root/link-absolute"
ln -s ../../../../../../../../etc/shadow "$root/data/escape"      # points outside the root
ln -s loop-b "$root/data/loop-a"; ln -s loop-a "$root/data/loop-b"
echo "linked twice" > "$root/data/hard1"
ln "$root/data/hard1" "$root/data/hard2"
printf 'latin-1 name\n' > "$root/data/caf$(printf '\xe9')"          # not UTF-8
printf 'utf-8 name\n' > "$root/data/naïve-文字.txt"
: > "$root/data/empty"
truncate -s 1G "$root/data/sparse-1g"
printf 'tail' | dd of="$root/data/sparse-1g" bs=1 seek=$((1024 * MiB - 4)) conv=notrunc status=none
bytes $((3 * MiB + 17)) 109 > "$root/data/random.bin"
echo "hello from the image" > "$root/home/user/notes.txt"
chmod 600 "$root/home/user/notes.txt"
find "$root" -exec touch -h -d @1700000000 {} +

# The content of every ESP.
esp="$work/esp"
mkdir -p "$esp/EFI/BOOT" "$esp/EFI/debian"
bytes 65536 103 > "$esp/EFI/BOOT/BOOTX64.EFI"
bytes 32768 104 > "$esp/EFI/debian/grubx64.efi"
printf 'search --fs-uuid --set=root 1234\nconfigfile ($root)/boot/grub/grub.cfg\n' > "$esp/EFI/debian/grub.cfg"
echo "a long file name" > "$esp/A Long File Name.txt"

# mkext4 IMAGE OFFSET_BYTES SIZE_MIB: an ext4 from the content tree at an offset.
mkext4() {
  mkfs.ext4 -q -F -L root -U 5b1d0b4e-7e0e-4d8a-9c7e-000000000001 -E "offset=$2,hash_seed=5b1d0b4e-7e0e-4d8a-9c7e-000000000002" \
    -d "$root" "$1" "$3M"
}
# mkesp IMAGE OFFSET_BYTES SIZE_MIB: a FAT32 ESP with the ESP tree.
mkesp() {
  mkfs.vfat -F 32 -s 1 -n ESP -i 12345678 --offset $(($2 / 512)) "$1" $(($3 * 1024)) >/dev/null 2>&1
  mcopy -s -m -i "$1@@$2" "$esp/EFI" "$esp/A Long File Name.txt" ::/
}
# offset_of IMAGE PARTNO: byte offset of a partition, from sfdisk.
offset_of() {
  sfdisk --json "$1" | python3 -c "
import json, re, sys
t = json.load(sys.stdin)['partitiontable']
p = [p for p in t['partitions'] if re.search(r'\D(\d+)$', p['node']).group(1) == '$2'][0]
print(p['start'] * t.get('sectorsize', 512))"
}

# --- gpt-uefi: FAT32 ESP + ext4 root ----------------------------------------------
img="$work/gpt-uefi.img"
truncate -s 200M "$img"
sgdisk -U 11111111-2222-3333-4444-555555555555 \
  -n 1:1M:+48M -t 1:EF00 -c 1:"EFI System" -u 1:11111111-0000-0000-0000-000000000001 \
  -n 2:0:0 -t 2:8304 -c 2:root -u 2:11111111-0000-0000-0000-000000000002 "$img" >/dev/null
mkesp "$img" $((1 * MiB)) 48
mkext4 "$img" $((49 * MiB)) 150
mv "$img" "$out/"

# --- gpt-bios: BIOS boot partition + ext4 root, boot code in sector 0 -------------
img="$work/gpt-bios.img"
truncate -s 160M "$img"
sgdisk -U 22222222-2222-3333-4444-555555555555 \
  -n 1:1M:+1M -t 1:EF02 -c 1:"BIOS boot" -n 2:0:0 -t 2:8300 -c 2:root "$img" >/dev/null
# GRUB's boot.img starts with a short jump; 440 bytes of stand-in boot code.
{ printf '\xeb\x63\x90'; bytes 437 105; } | dd of="$img" conv=notrunc status=none
bytes 65536 106 | dd of="$img" bs=1M seek=1 conv=notrunc status=none
mkext4 "$img" $((2 * MiB)) 150
mv "$img" "$out/"

# --- gpt-hybrid: ESP + BIOS boot + root, and a hybrid MBR -------------------------
img="$work/gpt-hybrid.img"
truncate -s 220M "$img"
sgdisk -U 33333333-2222-3333-4444-555555555555 \
  -n 1:1M:+1M -t 1:EF02 -c 1:"BIOS boot" -n 2:0:+48M -t 2:EF00 -c 2:"EFI System" \
  -n 3:0:0 -t 3:8304 -c 3:root "$img" >/dev/null
sgdisk -h 2 "$img" >/dev/null
{ printf '\xeb\x63\x90'; bytes 437 107; } | dd of="$img" conv=notrunc status=none
mkesp "$img" "$(offset_of "$img" 2)" 48
mkext4 "$img" "$(offset_of "$img" 3)" 150
mv "$img" "$out/"

# --- mbr: primaries, an extended partition, two logical partitions ----------------
img="$work/mbr.img"
truncate -s 300M "$img"
sfdisk -q "$img" <<'EOF'
label: dos
label-id: 0x12345678
start=2048, size=150MiB, type=83, bootable
size=40MiB, type=6
type=5
size=20MiB, type=83
size=16MiB, type=82
EOF
mkext4 "$img" "$(offset_of "$img" 1)" 150
mkfs.vfat -F 16 -n DATA -i 2468ace0 --offset $(( $(offset_of "$img" 2) / 512 )) "$img" $((40 * 1024)) >/dev/null 2>&1
mcopy -s -m -i "$img@@$(offset_of "$img" 2)" "$esp/EFI" "$esp/A Long File Name.txt" ::/
# Logical 5: a small ext2 holding one file; logical 6: swap.
mkdir -p "$work/small" && echo "logical" > "$work/small/in-logical.txt"
mkfs.ext2 -q -F -L logical -E "offset=$(offset_of "$img" 5)" -d "$work/small" "$img" 20M
truncate -s 16M "$work/swap" && mkswap -q -U 6b1d0b4e-7e0e-4d8a-9c7e-000000000006 "$work/swap" >/dev/null
dd if="$work/swap" of="$img" bs=1M seek=$(( $(offset_of "$img" 6) / MiB )) conv=notrunc,sparse status=none
{ printf '\xfa\x33\xc0'; bytes 437 108; } | dd of="$img" conv=notrunc status=none
mv "$img" "$out/"

# --- bare-ext4: a filesystem with no partition table ------------------------------
img="$work/bare-ext4.img"
truncate -s 150M "$img"
mkext4 "$img" 0 150
mv "$img" "$out/"

# --- gpt-4k: 4096-byte logical sectors --------------------------------------------
img="$work/gpt-4k.img"
truncate -s 480M "$img"
# sfdisk 2.38 cannot set a sector size for an image file; fdisk -b can.
printf 'g\nn\n1\n256\n+260M\nt\n1\nn\n2\n\n\nw\n' | fdisk -b 4096 "$img" >/dev/null
# FAT32 needs 65525 clusters: with 4 KiB sectors that takes the 260 MiB ESP
# that 4Kn disks use.
truncate -s 260M "$work/esp4k"
mkfs.vfat -F 32 -S 4096 -s 1 -n ESP -i 87654321 "$work/esp4k" >/dev/null
mcopy -s -m -i "$work/esp4k" "$esp/EFI" ::/
dd if="$work/esp4k" of="$img" bs=4096 seek=256 conv=notrunc,sparse status=none
mkext4 "$img" $(( (256 + 66560) * 4096 )) 200
mv "$img" "$out/"

# --- gpt-corrupt-primary: gpt-uefi with its primary header damaged ----------------
cp --sparse=always "$out/gpt-uefi.img" "$work/gpt-corrupt-primary.img"
printf 'XXXX' | dd of="$work/gpt-corrupt-primary.img" bs=1 seek=$((512 + 40)) conv=notrunc status=none
mv "$work/gpt-corrupt-primary.img" "$out/"

# --- gpt-containers: LVM2 PV, LUKS2, LUKS1, and every recognised-but-unread kind --
img="$work/gpt-containers.img"
truncate -s 1200M "$img"
sgdisk -U 55555555-2222-3333-4444-555555555555 \
  -n 1:1M:+16M -t 1:8E00 -c 1:lvm -n 2:0:+32M -t 2:8309 -c 2:luks2 -n 3:0:+16M -t 3:8309 -c 3:luks1 \
  -n 4:0:+320M -t 4:8300 -c 4:xfs -n 5:0:+128M -t 5:8300 -c 5:btrfs -n 6:0:+16M -t 6:8200 -c 6:swap \
  -n 7:0:+16M -t 7:8300 -c 7:squashfs -n 8:0:+16M -t 8:8300 -c 8:erofs -n 9:0:+16M -t 9:0700 -c 9:ntfs \
  -n 10:0:+16M -t 10:8300 -c 10:iso9660 -n 11:0:+16M -t 11:8300 -c 11:empty \
  -n 12:0:+16M -t 12:8300 -c 12:ext4-inline-data "$img" >/dev/null
put() { # put PARTNO FILE: copy a filesystem image into a partition
  dd if="$2" of="$img" bs=1M seek=$(( $(offset_of "$img" "$1") / MiB )) conv=notrunc,sparse status=none
}
# An LVM2 physical volume label as pvcreate writes it (pvcreate needs a block device):
# "LABELONE" in sector 1, the PV header naming the "LVM2 001" format at +24.
python3 - "$work/lvm" <<'PY'
import struct, sys, zlib
sector = bytearray(512)
sector[0:8] = b"LABELONE"
struct.pack_into("<Q", sector, 8, 1)          # this label's sector
struct.pack_into("<I", sector, 20, 32)        # offset of the PV header
sector[24:32] = b"LVM2 001"
sector[32:64] = b"fixtureuuidfixtureuuidfixtureuui"
struct.pack_into("<Q", sector, 64, 16 << 20)  # device size
struct.pack_into("<I", sector, 16, zlib.crc32(bytes(sector[20:])) & 0xffffffff)
with open(sys.argv[1], "wb") as f:
    f.write(bytes(512) + bytes(sector))
    f.truncate(16 << 20)
PY
put 1 "$work/lvm"
for v in 2 1; do
  truncate -s $(( v == 2 ? 32 : 16 ))M "$work/luks$v"
  echo -n fixture-passphrase | cryptsetup luksFormat -q --type "luks$v" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --uuid 7b1d0b4e-7e0e-4d8a-9c7e-00000000000$v --key-file - "$work/luks$v"
done
put 2 "$work/luks2"; put 3 "$work/luks1"
truncate -s 320M "$work/xfs"; mkfs.xfs -q -f "$work/xfs"; put 4 "$work/xfs"
truncate -s 128M "$work/btrfs"; mkfs.btrfs -q -f "$work/btrfs" >/dev/null; put 5 "$work/btrfs"
truncate -s 16M "$work/swap2"; mkswap -q "$work/swap2" >/dev/null; put 6 "$work/swap2"
mksquashfs "$work/small" "$work/sq" -quiet -noappend >/dev/null; put 7 "$work/sq"
mkfs.erofs --quiet -T 1700000000 "$work/erofs" "$work/small"; put 8 "$work/erofs"
truncate -s 16M "$work/ntfs"; mkntfs -q -F -Q "$work/ntfs" >/dev/null; put 9 "$work/ntfs"
genisoimage -quiet -o "$work/iso" "$work/small"; put 10 "$work/iso"
# An ext4 feature ext4-view cannot read: it must be reported, never an empty result.
mkfs.ext4 -q -F -O inline_data -E "offset=$(offset_of "$img" 12)" -d "$work/small" "$img" 16M
mv "$img" "$out/"

# --- debian-bookworm: a real Debian root made by debootstrap (minbase + sshd) -------
# The package archive is whatever this host's apt uses (AMIFORGE_DEBIAN_MIRROR
# overrides it), so no mirror is written here.
mirror=${AMIFORGE_DEBIAN_MIRROR:-$(
  { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
    awk '/^URIs:/ {print $2} $1 == "deb" {print $2}' | grep -v security | head -1 || true)}
[ -n "$mirror" ] || { echo "no Debian mirror in this host's apt sources; set AMIFORGE_DEBIAN_MIRROR" >&2; exit 2; }
debootstrap --variant=minbase --include=openssh-server bookworm "$work/debian" "$mirror" \
  > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 2; }
img="$work/debian-bookworm.img"
truncate -s 1G "$img"
sgdisk -n 1:1M:0 -t 1:8304 -c 1:root "$img" >/dev/null
mkfs.ext4 -q -F -L root -E "offset=$MiB" -d "$work/debian" "$img" 1000M
mv "$img" "$out/"

echo "$want" > "$stamp"
ls -ls "$out" >&2
