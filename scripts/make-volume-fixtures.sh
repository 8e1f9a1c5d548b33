#!/usr/bin/env bash
# Builds the volume-manager fixtures into OUTDIR/volumes with LVM's own tools:
# pvcreate and vgcreate on loop devices (this machine has no device-mapper, so no LV
# can be activated), logical volumes written into the metadata with vgcfgrestore,
# and LVM's own account of where each LV lies (lvs -o seg_pe_ranges) saved beside the
# image as the tests' independent ground truth. Filesystems are made with mkfs.ext4
# -d and written into the LVs through that account.
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
python3 - "$xtree" > "$work/proto" <<'PY'
import os, stat, sys
top = sys.argv[1]
print("/dev/null\n0 0\nd--755 0 0")
def emit(d, depth):
    for name in sorted(os.listdir(d)):
        full = os.path.join(d, name)
        st = os.lstat(full)
        pad = " " * depth
        if stat.S_ISLNK(st.st_mode):
            print(f"{pad}{name} l--777 0 0 {os.readlink(full)}")
        elif stat.S_ISDIR(st.st_mode):
            print(f"{pad}{name} d--755 0 0")
            emit(full, depth + 1)
            print(f"{pad}$")
        else:
            print(f"{pad}{name} ---644 0 0 {full}")
emit(top, 1)
print("$")
PY
truncate -s 320M "$out/xfs-v5.img"
mkfs.xfs -q -f -m uuid=4b1d0000-0000-4000-8000-000000000005 -p "$work/proto" "$out/xfs-v5.img"
truncate -s 320M "$out/xfs-v4.img"
mkfs.xfs -q -f -m crc=0 -n ftype=0 -p "$work/proto" "$out/xfs-v4.img" 2>/dev/null
cp -r "$xtree" "$out/xfs.tree"

echo "$want" > "$stamp"
ls -ls "$out" >&2
