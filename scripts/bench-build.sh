#!/usr/bin/env bash
# Benchmark: `amiforge build` of the bootable Debian 12 tree (scripts/make-boot-tree.sh)
# beside the floor: the same disk made by hand with the tools (sgdisk, mkfs.vfat and
# mcopy, grub-mkimage for UEFI and BIOS with dd of the core image and boot.img, and
# mkfs.ext4 -d of the tree in place), in alternating runs of one session; then the
# time `amiforge boot-test` takes to reach the user data's marker, with software
# emulation and, where the host's KVM is usable, with KVM; and the same for the arm64
# tree (`make-boot-tree.sh DIR arm64`) in qemu-system-aarch64.
#
#   scripts/bench-build.sh [RUNS]        (default 5)
#
# amiforge is measured three times: as shipped (sysprep, and the audit's secret scan
# of the built root), with --fail-on none (no scan), and with --fail-on none and an
# XFS root (mkfs.xfs -p, xfsprogs from install-deps.sh's tool directory). The floor does neither, and writes
# no fstab or GRUB configuration: it is what the disk costs at the least.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
profile=${BENCH_PROFILE:-release}
cargo build --profile "$profile" --locked --quiet -p amiforge -p ebs-testserver
target=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
tree=$(scripts/make-boot-tree.sh "${AMIFORGE_FIXTURES:-$PWD/fixtures/build}")
arm64_tree=$(scripts/make-boot-tree.sh "${AMIFORGE_FIXTURES:-$PWD/fixtures/build}" arm64)
export AMIFORGE_MKFS_XFS=${AMIFORGE_MKFS_XFS:-${AMIFORGE_TOOLS:-$HOME/.cache/amiforge/tools}/xfsprogs/bin/mkfs.xfs}
dir=${BENCH_DIR:-$PWD/target/bench}/build
mkdir -p "$dir"
export SOURCE_DATE_EPOCH=1700000000 E2FSPROGS_FAKE_TIME=1700000000
size=2G
modules="part_gpt part_msdos ext2 xfs fat search search_fs_uuid normal configfile linux echo test gzio serial terminal"

# The floor: one shell function doing by hand what build does at the least.
floor() {
  local img=$dir/floor.img work=$dir/floor-work
  rm -rf "$img" "$work"; mkdir -p "$work"
  truncate -s "$size" "$img"
  sgdisk -q -n 1:1M:+1M -t 1:ef02 -n 2:0:+128M -t 2:ef00 -n 3:0:-1M -t 3:8304 "$img"
  mkfs.vfat -q -F 32 --offset 4096 "$img" 131072
  printf 'search.fs_uuid 0f0e0d0c-0b0a-4908-8706-050403020100 root\nset prefix=($root)/boot/grub\n' > "$work/early.cfg"
  grub-mkimage -O x86_64-efi -d "$tree/usr/lib/grub/x86_64-efi" -o "$work/BOOTX64.EFI" -c "$work/early.cfg" -p /boot/grub $modules efi_gop all_video
  mmd -i "$img@@2M" ::/EFI ::/EFI/BOOT
  mcopy -i "$img@@2M" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
  grub-mkimage -O i386-pc -d "$tree/usr/lib/grub/i386-pc" -o "$work/core.img" -c "$work/early.cfg" -p /boot/grub $modules biosdisk
  dd if="$work/core.img" of="$img" bs=512 seek=2048 conv=notrunc status=none
  dd if="$tree/usr/lib/grub/i386-pc/boot.img" of="$img" bs=440 count=1 conv=notrunc status=none
  mkfs.ext4 -q -F -U 0f0e0d0c-0b0a-4908-8706-050403020100 -E offset=$((136 << 20)),nodiscard,root_owner=0:0 \
    -d "$tree" "$img" $(( (2048 - 136 - 1) * 1024 ))k
}
export -f floor; export dir tree size modules

measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$dir/time.out" "$@" > "$dir/$name.stdout" 2> "$dir/$name.stderr" || {
    echo "$name failed:" >&2; tail -5 "$dir/$name.stderr" >&2; exit 2; }
  read -r wall user sys rss < "$dir/time.out"
  echo "$name $wall $(python3 -c "print(round($user + $sys, 2))") $rss"
}

results=()
for i in $(seq "$runs"); do
  echo "round $i of $runs" >&2
  results+=("$(measure floor bash -c floor)")
  rm -f "$dir/amiforge.img"
  results+=("$(measure amiforge "$target/amiforge" build "$tree" -o "$dir/amiforge.img" --size "$size" --format json --no-progress)")
  rm -f "$dir/amiforge.img"
  results+=("$(measure amiforge-no-scan "$target/amiforge" build "$tree" -o "$dir/amiforge.img" --size "$size" --fail-on none --format json)")
  rm -f "$dir/amiforge-xfs.img"
  results+=("$(measure amiforge-xfs-no-scan "$target/amiforge" build "$tree" -o "$dir/amiforge-xfs.img" --size "$size" --fail-on none --root-fs xfs --format json)")
done

# Boot to the user data's marker, each firmware, software emulation and KVM.
boots=()
for accel in tcg kvm; do
  if "$target/amiforge" boot-test "$dir/amiforge.img" --accel "$accel" --timeout 600 --format json \
      > "$dir/boot-$accel.json" 2> "$dir/boot-$accel.stderr"; then
    boots+=("$accel ok")
  else
    boots+=("$accel failed: $(tail -1 "$dir/boot-$accel.stderr")")
  fi
done
# The arm64 disk: no KVM for it on an x86 host.
"$target/amiforge" build "$arm64_tree" -o "$dir/arm64.img" --size "$size" --fail-on none --format json > /dev/null
if "$target/amiforge" boot-test "$dir/arm64.img" --accel tcg --timeout 900 --format json \
    > "$dir/boot-arm64.json" 2> "$dir/boot-arm64.stderr"; then
  boots+=("arm64 ok")
else
  boots+=("arm64 failed: $(tail -1 "$dir/boot-arm64.stderr")")
fi

python3 - "$dir" "$runs" "${boots[@]}" -- "${results[@]}" <<'PY'
import json, statistics, sys
args = sys.argv[1:]
dir, runs = args[0], int(args[1])
sep = args.index('--')
boots, results = args[2:sep], [r.split() for r in args[sep + 1:]]
by = {}
for name, wall, cpu, rss in results:
    by.setdefault(name, []).append((float(wall), float(cpu), int(rss)))
med = {n: [statistics.median(x[i] for x in v) for i in range(3)] for n, v in by.items()}
print(f"build of the Debian tree, medians of {runs} alternating runs:")
print(f"{'':18} {'wall s':>8} {'CPU s':>8} {'RSS MiB':>8} {'wall vs floor':>14}")
for n in ['floor', 'amiforge', 'amiforge-no-scan', 'amiforge-xfs-no-scan']:
    w, c, r = med[n]
    print(f"{n:18} {w:8.2f} {c:8.2f} {r / 1024:8.0f} {w / med['floor'][0]:13.2f}x")
print("boot-test to the user data's marker:")
for b in boots:
    accel, status = b.split(' ', 1)
    if status != 'ok':
        print(f"  {accel}: {status}")
        continue
    r = json.load(open(f"{dir}/boot-{accel}.json"))
    for boot in r['boots']:
        notes = '; '.join(boot['notes'])
        print(f"  {accel} requested, ran {boot['accel']}, {boot['firmware']}: "
              f"{boot['seconds_to_last_step']:.1f} s to the marker, {boot['seconds']:.1f} s in all"
              + (f" ({notes})" if notes else ""))
PY
