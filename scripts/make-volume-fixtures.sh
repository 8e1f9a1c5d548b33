#!/usr/bin/env bash
# Builds the volume-manager fixtures into OUTDIR/volumes with LVM's own tools:
# pvcreate and vgcreate on loop devices (this machine has no device-mapper, so no LV
# can be activated), logical volumes written into the metadata with vgcfgrestore,
# and LVM's own account of where each LV lies (lvs -o seg_pe_ranges) saved beside the
# image as the tests' independent ground truth. Filesystems are made with mkfs.ext4
# -d and written into the LVs through that account. XFS images are made with
# mkfs.xfs -p, btrfs images with mkfs.btrfs --rootdir (compressed, with subvolumes).
#
#   scripts/make-volume-fixtures.sh [OUTDIR]      (default: fixtures/build)
#
# Its own stamp, like make-foreign-fixtures.sh. Needs root for losetup.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/fixtures/build}/volumes
mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp="$out/.stamp"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "volume fixtures up to date in $out" >&2
  exit 0
fi

export PATH="$PATH:/usr/sbin:/sbin" LVM_SUPPRESS_FD_WARNINGS=1
export E2FSPROGS_FAKE_TIME=1700000000 SOURCE_DATE_EPOCH=1700000000 TZ=UTC
MiB=$((1024 * 1024))
work=$(mktemp -d)
loops=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
rm -rf "${out:?}"/*
bytes() { python3 -c "import random, sys; random.seed($2); sys.stdout.buffer.write(random.randbytes($1))"; }
# LVM on loop devices only, without udev, a devices file, or backups in /etc/lvm.
lvmconf='devices { filter=["a|^/dev/loop|","r|.*|"] use_devicesfile=0 } activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 }'

# --- The trees the LVs hold ---------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{etc,usr/lib,boot,var/lib/rpm,home/user}
printf 'NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n' > "$root/usr/lib/os-release"
ln -s ../usr/lib/os-release "$root/etc/os-release"
echo "lvm-host" > "$root/etc/hostname"
printf '[default]\naws_access_key_id = AKIAZ4MRTQ7VXW2KPL6N\n' > "$root/home/user/.aws-credentials"
bytes $((3 * MiB + 5)) 301 > "$root/usr/lib/big.bin"
data="$work/data"
mkdir -p "$data/dir"
bytes $((5 * MiB + 123)) 302 > "$data/dir/striped.bin"
echo "on a striped LV" > "$data/readme.txt"
find "$root" "$data" -exec touch -h -d @1700000000 {} +

# --- lvm.img: GPT, an ext4 /boot, and two PVs of VG "vg0" --------------------------
#   root: linear, two segments (extents 0-4 of pv0, then 10-14 of pv1), ext4
#   data: striped over pv0 and pv1, 64 KiB stripes, ext4
#   swap: linear, one segment, mkswap
img="$out/lvm.img"
truncate -s 256M "$img"
sgdisk -n 1:2048:+24M -t 1:8300 -n 2:0:+100M -t 2:8e00 -n 3:0:+100M -t 3:8e00 "$img" >/dev/null
for n in 0 1; do
  truncate -s 100M "$work/pv$n.img"
  l=$(losetup -f --show "$work/pv$n.img")
  loops+=("$l")
  pvcreate --config "$lvmconf" --norestorefile --uuid "fixpv$n-0000-0000-0000-0000-0000-00000$n" -ff -y "$l" >/dev/null
done
vgcreate --config "$lvmconf" -s 4M vg0 "${loops[@]}" >/dev/null
vgcfgbackup --config "$lvmconf" -f "$work/vg.conf" vg0 >/dev/null
python3 - "$work/vg.conf" <<'PY'
import sys
path = sys.argv[1]
def lv(name, segments):
    segs = "".join(
        f"""
            segment{i + 1} {{
                start_extent = {start}
                extent_count = {count}
                type = "striped"
                stripe_count = {len(stripes)}
                {f'stripe_size = {size}' if len(stripes) > 1 else ''}
                stripes = [ {", ".join(f'"{pv}", {e}' for pv, e in stripes)} ]
            }}"""
        for i, (start, count, size, stripes) in enumerate(segments))
    return f"""
        {name} {{
            id = "{name[:4]:x<6}-0000-0000-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            flags = []
            segment_count = {len(segments)}{segs}
        }}"""
lvs = ("\n    logical_volumes {"
       + lv("root", [(0, 5, 0, [("pv0", 0)]), (5, 5, 0, [("pv1", 10)])])
       + lv("data", [(0, 8, 128, [("pv0", 10), ("pv1", 0)])])
       + lv("swap", [(0, 2, 0, [("pv0", 20)])])
       + "\n    }\n")
s = open(path).read()
end = s.rindex("}")
open(path, "w").write(s[:end] + lvs + s[end:])
PY
vgcfgrestore --config "$lvmconf" -f "$work/vg.conf" vg0 >/dev/null 2>&1
# LVM's own account of the layout: name;first extent;PV:extents ...;stripe size.
lvs --config "$lvmconf" --noheadings --separator ';' --units b --nosuffix \
  -o lv_name,seg_start_pe,seg_pe_ranges,stripe_size vg0 2>/dev/null | sed 's/^ *//' > "$work/segments"
for i in 0 1; do sed -i "s|${loops[$i]}:|pv$i:|g" "$work/segments"; done
cp "$work/segments" "$out/lvm.segments"
for l in "${loops[@]}"; do losetup -d "$l"; done
loops=()

# The filesystems, written where LVM says each LV's extents are.
mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -U 4b1d0000-0000-4000-8000-000000000001 -d "$root" "$work/root.ext4" 40M
mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -U 4b1d0000-0000-4000-8000-000000000002 -d "$data" "$work/data.ext4" 32M
truncate -s 8M "$work/swap.img" && mkswap -q -U 4b1d0000-0000-4000-8000-000000000003 "$work/swap.img"
python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
extent, pe_start = 4 << 20, 2048 * 512
for line in open(f"{work}/segments"):
    name, first, ranges, stripe = line.strip().split(";")
    src = {"root": "root.ext4", "data": "data.ext4", "swap": "swap.img"}[name]
    stripes = []
    for r in ranges.split():
        pv, span = r.split(":")
        a, b = map(int, span.split("-"))
        stripes.append((pv, a, b - a + 1))
    with open(f"{work}/{src}", "rb") as f:
        lv_start = int(first) * extent
        if len(stripes) == 1:
            pv, a, n = stripes[0]
            f.seek(lv_start)
            chunk = f.read(n * extent)
            with open(f"{work}/{pv}.img", "r+b") as d:
                d.seek(pe_start + a * extent)
                d.write(chunk)
        else:
            size = int(stripe)
            total = sum(n for _, _, n in stripes) * extent
            for k in range(total // size):
                pv, a, _ = stripes[k % len(stripes)]
                f.seek(lv_start + k * size)
                chunk = f.read(size)
                with open(f"{work}/{pv}.img", "r+b") as d:
                    d.seek(pe_start + a * extent + (k // len(stripes)) * size)
                    d.write(chunk)
PY
mkfs.ext4 -q -F -b 1024 -U 4b1d0000-0000-4000-8000-000000000004 -d "$root/boot" "$work/boot.ext4" 24M
dd if="$work/boot.ext4" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/pv0.img" of="$img" bs=1M seek=25 conv=notrunc,sparse status=none
dd if="$work/pv1.img" of="$img" bs=1M seek=125 conv=notrunc,sparse status=none
cp -r "$root" "$out/lvm-root.tree"
cp -r "$data" "$out/lvm-data.tree"

# --- xfs-v5.img and xfs-v4.img: bare XFS made by mkfs.xfs -p (a protofile of the
# tree, no mount): directories in every format (short form, block, leaf, node), an
# inline and a remote symlink, a file of many blocks.
xtree="$work/xtree"
mkdir -p "$xtree"/{etc,small,block,leaf,node,usr/lib}
cp "$root/usr/lib/os-release" "$xtree/usr/lib/os-release"
ln -s ../usr/lib/os-release "$xtree/etc/os-release"
echo "xfs-host" > "$xtree/etc/hostname"
for i in 1 2 3; do echo "small $i" > "$xtree/small/f$i"; done
for i in $(seq 40); do echo "block $i" > "$xtree/block/entry-$i"; done
for i in $(seq 400); do echo "leaf $i" > "$xtree/leaf/a-longer-entry-name-$i"; done
for i in $(seq 3000); do : > "$xtree/node/n$i"; done
bytes $((6 * MiB + 7)) 303 > "$xtree/usr/lib/big.bin"
ln -s "$(printf 'long/%.0s' $(seq 80))target" "$xtree/remote-link"
ln -s usr/lib "$xtree/lib"
find "$xtree" -exec touch -h -d @1700000000 {} +
python3 "$here/scripts/xfs-protofile.py" "$xtree" > "$work/proto"
truncate -s 320M "$out/xfs-v5.img"
mkfs.xfs -q -f -m uuid=4b1d0000-0000-4000-8000-000000000005 -p "$work/proto" "$out/xfs-v5.img"
truncate -s 320M "$out/xfs-v4.img"
mkfs.xfs -q -f -m crc=0 -n ftype=0 -p "$work/proto" "$out/xfs-v4.img" 2>/dev/null
cp -r "$xtree" "$out/xfs.tree"

# --- xfs-modern.img: what today's mkfs.xfs makes by default (xfsprogs 7: rmapbt,
# nrext64, exchange-range, parent pointers), populated from a directory (mkfs.xfs -p
# DIR, the xfsprogs install-deps.sh unpacks). A sparse file of 600 data runs keeps its
# extents in a bmap btree, and a directory of 30,000 entries, its blocks interleaved
# with the inodes mkfs allocates as it goes, keeps them in btree format too; xfs_db
# rdump writes the tree back out beside it as the independent account.
xfs_progs=${AMIFORGE_TOOLS:-$HOME/.cache/amiforge/tools}/xfsprogs/bin
mtree="$work/mtree"
mkdir -p "$mtree"/{etc,usr/lib,man,big}
cp "$root/usr/lib/os-release" "$mtree/usr/lib/os-release"
ln -s ../usr/lib/os-release "$mtree/etc/os-release"
echo "xfs-modern-host" > "$mtree/etc/hostname"
python3 - "$mtree" <<'PY'
import os, random, sys
tree = sys.argv[1]
random.seed(304)
with open(os.path.join(tree, "usr/lib/sparse.bin"), "wb") as f:
    for i in range(600):
        f.seek(i * 8192)
        f.write(random.randbytes(4096))
for i in range(30000):
    open(os.path.join(tree, "big", "an-entry-with-a-fairly-long-name-%06d" % i), "w").close()
with open(os.path.join(tree, "man", "Text::Wrap.3pm"), "w") as f:
    f.write("a name with colons, as every dpkg multi-arch file has\n")
PY
ln "$mtree/usr/lib/os-release" "$mtree/usr/lib/os-release.hardlink"
ln -s "$(printf 'long/%.0s' $(seq 80))target" "$mtree/remote-link"
find "$mtree" -exec touch -h -d @1700000000 {} +
truncate -s 512M "$out/xfs-modern.img"
"$xfs_progs/mkfs.xfs" -q -f -m uuid=4b1d0000-0000-4000-8000-000000000007 -p "$mtree" "$out/xfs-modern.img"
mkdir -p "$out/xfs-modern.rdump"
"$xfs_progs/xfs_db" -r -c "rdump / $out/xfs-modern.rdump" "$out/xfs-modern.img" 2>/dev/null

# --- btrfs, made by mkfs.btrfs --rootdir (btrfs-progs of at least 6.11, which
# install-deps.sh unpacks: the release's 6.2 has neither --compress nor --subvol).
# btrfs restore, btrfs-progs' own reader, writes each image's tree back out beside it
# as the second, independent account of what the image holds.
btrfs_progs=${AMIFORGE_TOOLS:-$HOME/.cache/amiforge/tools}/btrfs-progs
mkfs_btrfs() { "$btrfs_progs/sbin/mkfs.btrfs" -q -f "$@"; }
btrfs_restore() { mkdir -p "$2" && "$btrfs_progs/bin/btrfs" restore -S "$1" "$2" >/dev/null; }
btree="$work/btree"
mkdir -p "$btree"/{etc,small,many,usr/lib,usr/share,srv,home/user}
cp "$xtree/usr/lib/os-release" "$btree/usr/lib/os-release"
ln -s ../usr/lib/os-release "$btree/etc/os-release"
echo "btrfs-host" > "$btree/etc/hostname"
for i in 1 2 3; do echo "small $i" > "$btree/small/f$i"; done
python3 -c "print('an inline extent, compressed when the image is ' * 60)" > "$btree/small/repeat.txt"
for i in $(seq 2000); do echo "$i" > "$btree/many/an-entry-with-a-longer-name-$i"; done
bytes $((6 * MiB + 11)) 304 > "$btree/usr/lib/big.bin"
seq 1 500000 > "$btree/usr/share/numbers.txt"
truncate -s $((3 * MiB)) "$btree/usr/lib/sparse.bin"
printf 'head' | dd of="$btree/usr/lib/sparse.bin" conv=notrunc status=none
echo "tail" >> "$btree/usr/lib/sparse.bin"
echo "in a subvolume" > "$btree/srv/data.txt"
printf '[default]\naws_access_key_id = AKIAZ4MRTQ7VXW2KPL7Q\n' > "$btree/home/user/.aws-credentials"
ln -s "$(printf 'long/%.0s' $(seq 80))target" "$btree/remote-link"
ln -s usr/lib "$btree/lib"
find "$btree" -exec touch -h -d @1700000000 {} +
for c in no zlib lzo zstd; do
  truncate -s 256M "$out/btrfs-$c.img"
  mkfs_btrfs -U 4b1d0000-0000-4000-8000-00000000000b --rootdir "$btree" --compress "$c" \
    -u rw:srv "$out/btrfs-$c.img"
  btrfs_restore "$out/btrfs-$c.img" "$out/btrfs-$c.restored"
done
cp -r "$btree" "$out/btrfs.tree"

# --- fedora-btrfs.img: Fedora's layout. GPT with an ESP, an ext4 /boot and a btrfs
# whose top level (the default subvolume) holds the subvolumes "root" and "home",
# zstd-compressed; /etc/fstab mounts subvol=root at / and subvol=home at /home. A
# third subvolume, "snapshots", is mounted nowhere.
ftop="$work/fedora"
mkdir -p "$ftop"/root/{etc,usr/lib,usr/bin,home,boot,var/lib/rpm} "$ftop/home/user"
printf 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40 (Cloud Edition)"\n' \
  > "$ftop/root/usr/lib/os-release"
ln -s ../usr/lib/os-release "$ftop/root/etc/os-release"
cp /bin/ls "$ftop/root/usr/bin/ls"
ln -s usr/bin "$ftop/root/bin"
cat > "$ftop/root/etc/fstab" <<'FSTAB'
UUID=4b1d0000-0000-4000-8000-00000000000f /          btrfs subvol=root,compress=zstd:1 0 0
UUID=4b1d0000-0000-4000-8000-00000000000e /boot      ext4  defaults 1 2
UUID=4b1d0000-0000-4000-8000-00000000000f /home      btrfs subvol=home,compress=zstd:1 0 0
FSTAB
printf '[default]\naws_access_key_id = AKIAZ4MRTQ7VXW2KPL3R\n' > "$ftop/home/user/.aws-credentials"
echo "fedora home" > "$ftop/home/user/notes.txt"
mkdir -p "$ftop/snapshots/1" && echo "an old snapshot" > "$ftop/snapshots/1/info"
fboot="$work/fedora-boot"
mkdir -p "$fboot/loader/entries"
bytes $((1 * MiB)) 305 > "$fboot/vmlinuz-6.8.5-301.fc40.x86_64"
echo "title Fedora Linux 40" > "$fboot/loader/entries/fedora.conf"
find "$ftop" "$fboot" -exec touch -h -d @1700000000 {} +
img="$out/fedora-btrfs.img"
truncate -s 512M "$img"
sgdisk -n 1:2048:+32M -t 1:ef00 -n 2:0:+64M -t 2:8300 -n 3:0:0 -t 3:8304 "$img" >/dev/null
truncate -s 32M "$work/esp.img"
mkfs.vfat -F 16 -i 4b1d000e "$work/esp.img" >/dev/null
printf 'MZ-not-really-a-loader' > "$work/BOOTX64.EFI"
mmd -i "$work/esp.img" ::EFI ::EFI/BOOT
mcopy -i "$work/esp.img" "$work/BOOTX64.EFI" ::EFI/BOOT/
mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -U 4b1d0000-0000-4000-8000-00000000000e -d "$fboot" "$work/fboot.ext4" 64M
root_bytes=$(( (512 - 1 - 32 - 64) * MiB - 34 * 512 ))
truncate -s "$root_bytes" "$work/froot.btrfs"
mkfs_btrfs -U 4b1d0000-0000-4000-8000-00000000000f --rootdir "$ftop" --compress zstd:1 \
  -u rw:root -u rw:home -u rw:snapshots "$work/froot.btrfs"
btrfs_restore "$work/froot.btrfs" "$out/fedora-btrfs.restored"
dd if="$work/esp.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/fboot.ext4" of="$img" bs=1M seek=33 conv=notrunc,sparse status=none
dd if="$work/froot.btrfs" of="$img" bs=1M seek=97 conv=notrunc,sparse status=none

# --- rhel.img: the RHEL family's layout. GPT with an ESP, /boot on XFS, and an LVM
# PV holding VG "rl" with the root LV (XFS, an rpm database in sqlite), a swap LV,
# and a thin pool with a thin LV (reported, not read).
rroot="$work/rhel-root"
mkdir -p "$rroot"/{etc,usr/bin,usr/lib,boot,var/lib/rpm,root/.aws,home/ops}
printf 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\nPLATFORM_ID="platform:el9"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n' \
  > "$rroot/usr/lib/os-release"
ln -s ../usr/lib/os-release "$rroot/etc/os-release"
cp /bin/ls "$rroot/usr/bin/ls"
ln -s usr/bin "$rroot/bin"
printf '[default]\naws_access_key_id = AKIAZ4MRTQ7VXW2KPM2T\n' > "$rroot/root/.aws/credentials"
echo "rhel-host" > "$rroot/etc/hostname"
rpmtop="$work/rpmbuild"
mkdir -p "$rpmtop"
for p in "bash 1 5.1.8 6.el9 x86_64" "openssl-libs 1 3.0.7 27.el9 x86_64" "tzdata 0 2024a 1.el9 noarch"; do
  set -- $p
  epoch=""; [ "$2" != 0 ] && epoch="Epoch: $2"
  printf 'Name: %s\nVersion: %s\nRelease: %s\n%s\nSummary: fixture\nLicense: MIT\nBuildArch: %s\n%%description\nfixture\n%%files\n' \
    "$1" "$3" "$4" "$epoch" "$5" > "$rpmtop/$1.spec"
  rpmbuild -bb --quiet --define "_topdir $rpmtop" --define "_build_id_links none" "$rpmtop/$1.spec" >/dev/null
done
rpm --define "_db_backend sqlite" --dbpath "$rroot/var/lib/rpm" --initdb
rpm --define "_db_backend sqlite" --dbpath "$rroot/var/lib/rpm" -i --justdb --nodeps --ignorearch --ignoreos \
  $(find "$rpmtop/RPMS" -name '*.rpm')
# rpm's own account of the database: the packages the audit must list.
rpm --define "_db_backend sqlite" --dbpath "$rroot/var/lib/rpm" -qa \
  --qf '%{NAME}\t%{EPOCH}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n' | sort > "$out/rhel.rpm-qa"
rboot="$work/rhel-boot"
mkdir -p "$rboot/loader/entries"
bytes $((1 * MiB)) 306 > "$rboot/vmlinuz-5.14.0-362.8.1.el9_3.x86_64"
echo "title Rocky Linux 9.3" > "$rboot/loader/entries/rocky.conf"
find "$rroot" "$rboot" -exec touch -h -d @1700000000 {} +
python3 "$here/scripts/xfs-protofile.py" "$rroot" > "$work/rhel-root.proto"
python3 "$here/scripts/xfs-protofile.py" "$rboot" > "$work/rhel-boot.proto"
truncate -s 320M "$work/rhel-root.xfs"
mkfs.xfs -q -f -m uuid=4b1d0000-0000-4000-8000-000000000010 -p "$work/rhel-root.proto" "$work/rhel-root.xfs"
truncate -s 320M "$work/rhel-boot.xfs"
mkfs.xfs -q -f -m uuid=4b1d0000-0000-4000-8000-000000000011 -p "$work/rhel-boot.proto" "$work/rhel-boot.xfs"
truncate -s 8M "$work/rhel-swap" && mkswap -q -U 4b1d0000-0000-4000-8000-000000000012 "$work/rhel-swap"
# The PV: LVM's tools write the label and metadata; each LV has one segment, and its
# filesystem goes where `lvs` says that segment starts.
truncate -s 400M "$work/rhel-pv.img"
l=$(losetup -f --show "$work/rhel-pv.img")
loops+=("$l")
pvcreate --config "$lvmconf" --norestorefile --uuid "fixpvr-0000-0000-0000-0000-0000-000000" -ff -y "$l" >/dev/null
vgcreate --config "$lvmconf" -s 4M rl "$l" >/dev/null
vgcfgbackup --config "$lvmconf" -f "$work/rl.conf" rl >/dev/null
python3 - "$work/rl.conf" <<'PY'
import sys
path = sys.argv[1]
def lv(name, start, count):
    return f"""
        {name} {{
            id = "{name[:4]:x<6}-0000-0000-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            flags = []
            segment_count = 1
            segment1 {{
                start_extent = 0
                extent_count = {count}
                type = "striped"
                stripe_count = 1
                stripes = [ "pv0", {start} ]
            }}
        }}"""
def hidden(name, start, count, uid):
    text = lv(name, start, count).replace(f'"{name[:4]:x<6}-', f'"{uid}-')
    return text.replace('"VISIBLE"', "").replace('"WRITE", ]', '"WRITE"]')
# A thin pool (its data and metadata sub-LVs and the spare hidden) and a thin LV in
# it: amiforge reports them, it does not read them.
thin = """
        pool {
            id = "pool00-0000-0000-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            flags = []
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 4
                type = "thin-pool"
                metadata = "pool_tmeta"
                pool = "pool_tdata"
                transaction_id = 1
                chunk_size = 128
                discards = "passdown"
                zero_new_blocks = 1
            }
        }
        thin1 {
            id = "thin10-0000-0000-0000-0000-0000-000000"
            status = ["READ", "WRITE", "VISIBLE"]
            flags = []
            segment_count = 1
            segment1 {
                start_extent = 0
                extent_count = 2
                type = "thin"
                thin_pool = "pool"
                transaction_id = 0
                device_id = 1
            }
        }"""
s = open(path).read()
end = s.rindex("}")
open(path, "w").write(s[:end] + "\n    logical_volumes {" + lv("root", 0, 80) + lv("swap", 80, 2)
                      + thin + hidden("pool_tmeta", 82, 1, "tmeta0") + hidden("pool_tdata", 83, 4, "tdata0")
                      + hidden("lvol0_pmspare", 87, 1, "spare0") + "\n    }\n" + s[end:])
PY
# --force: LVM restores a VG with thin volumes only when told to.
vgcfgrestore --config "$lvmconf" --force -f "$work/rl.conf" rl >/dev/null 2>&1
lvs --config "$lvmconf" --noheadings --separator ';' -o lv_name,seg_pe_ranges rl 2>/dev/null \
  | sed "s/^ *//; s|$l:|pv0:|" > "$out/rhel.segments"
losetup -d "$l"
loops=()
# The PV's data area starts 1 MiB in (pe_start), and extents are 4 MiB.
first_extent() { awk -F';' -v lv="$1" '$1 == lv { split($2, r, "[:-]"); print r[2] }' "$out/rhel.segments"; }
dd if="$work/rhel-root.xfs" of="$work/rhel-pv.img" bs=1M seek=$(( 1 + $(first_extent root) * 4 )) conv=notrunc,sparse status=none
dd if="$work/rhel-swap" of="$work/rhel-pv.img" bs=1M seek=$(( 1 + $(first_extent swap) * 4 )) conv=notrunc,sparse status=none
img="$out/rhel.img"
truncate -s 800M "$img"
sgdisk -n 1:2048:+64M -t 1:ef00 -n 2:0:+320M -t 2:8300 -n 3:0:+400M -t 3:8e00 "$img" >/dev/null
truncate -s 64M "$work/rhel-esp.img"
mkfs.vfat -F 16 -i 4b1d0010 "$work/rhel-esp.img" >/dev/null
mmd -i "$work/rhel-esp.img" ::EFI ::EFI/BOOT ::EFI/rocky
mcopy -i "$work/rhel-esp.img" "$work/BOOTX64.EFI" ::EFI/BOOT/
mcopy -i "$work/rhel-esp.img" "$work/BOOTX64.EFI" ::EFI/rocky/shimx64.efi
dd if="$work/rhel-esp.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/rhel-boot.xfs" of="$img" bs=1M seek=65 conv=notrunc,sparse status=none
dd if="$work/rhel-pv.img" of="$img" bs=1M seek=385 conv=notrunc,sparse status=none
cp -r "$rroot" "$out/rhel-root.tree"

echo "$want" > "$stamp"
ls -ls "$out" >&2
