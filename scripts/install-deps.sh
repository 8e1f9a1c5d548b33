#!/usr/bin/env bash
# Installs the system tools the fixtures, tests and benchmarks use, from Debian's
# packages. Safe to run again: it only installs what is missing.
set -euo pipefail

packages=(
  e2fsprogs        # mkfs.ext4 -d, debugfs (reference reader)
  fdisk            # sfdisk, fdisk -b (tables; reference reader)
  gdisk            # sgdisk (GPT, hybrid MBR)
  dosfstools       # mkfs.vfat
  mtools           # mcopy (FAT writer and reference reader)
  sleuthkit        # mmls (reference reader)
  cryptsetup-bin   # LUKS1/2 headers
  xfsprogs btrfs-progs squashfs-tools erofs-utils genisoimage ntfs-3g
  debootstrap      # a real Debian root for the package and audit tests
  rpm              # rpmbuild and rpm: a real rpm database, and rpm -qa as reference
  debsums          # reference for the package-file integrity check (debsums -a -c)
  mdadm            # mdadm --examine: reference reader of the hand-written md superblocks
  lvm2             # pvcreate, vgcreate, vgcfgrestore, lvs: the LVM fixtures and their layout
  ovmf seabios     # boot-test's firmware: UEFI (OVMF) and legacy BIOS (SeaBIOS)
  qemu-efi-aarch64 # boot-test's arm64 UEFI firmware (AAVMF)
  grub-common      # grub-mkimage: build assembles GRUB's images from the tree's own modules
  openssh-client openssl zstd xz-utils   # planted keys, compressed logs
  python3 python3-venv
)
missing_packages() {
  missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing_packages "${packages[@]}"
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU 10 from the release's backports: qemu-img for the qcow2, VMDK, VHD and VHDX
# containers of the input tests, qemu-system-x86 and qemu-system-arm for boot-test,
# qemu-user-static to run the arm64 boot tree's maintainer scripts. The release's 7.2
# cannot make a LUKS-encrypted qcow2 on this kind of machine (its key-derivation
# benchmark reads no thread CPU time), and qemu-system must match qemu-utils, which a
# machine may already have from backports. Only these packages and the versions they
# require (QEMU's own common and data packages, a newer seabios) come from there.
qemu_major=$(qemu-img --version 2>/dev/null | awk 'NR == 1 {split($3, v, "."); print v[1]}')
if [ "${qemu_major:-0}" -lt 10 ] || ! command -v qemu-system-x86_64 >/dev/null ||
   ! command -v qemu-system-aarch64 >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  mirror=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' \
    | awk -v r="$codename" '$1 == r { print $2; exit }')
  [ -n "$mirror" ] || { echo "no apt source for $codename to take backports from" >&2; exit 2; }
  list=/etc/apt/sources.list.d/amiforge-backports.list
  if ! grep -qs "$codename-backports" $list; then
    echo "deb $mirror $codename-backports main" | $sudo tee $list >/dev/null
  fi
  echo "installing qemu-utils, qemu-system-x86, qemu-system-arm and qemu-user-static from $codename-backports" >&2
  $sudo apt-get update -qq
  # -t: the versions they require (qemu-system-common and -data of the same release,
  # seabios newer than stable's) come from backports too; naming each package as
  # pkg/release takes only the named ones from there and leaves the rest unsatisfiable.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    -t "$codename-backports" qemu-utils qemu-system-x86 qemu-system-arm qemu-user-static >/dev/null
fi
missing_packages "${packages[@]}" qemu-utils qemu-system-x86 qemu-system-arm qemu-user-static
[ ${#missing[@]} -eq 0 ] || { echo "still missing after installing: ${missing[*]}" >&2; exit 2; }

# btrfs-progs of at least 6.11 for the btrfs fixtures: `mkfs.btrfs --rootdir` with
# --compress (zlib, lzo, zstd) and --subvol, which the release's 6.2 lacks. The
# backports build is unpacked into a private directory (nothing on the system changes)
# from the same Debian mirror apt is configured with.
tools=${AMIFORGE_TOOLS:-$HOME/.cache/amiforge/tools}
btrfs_dir="$tools/btrfs-progs"
# (mkfs.btrfs --help exits 1: its status is not the test.)
has_compress() { "$btrfs_dir/sbin/mkfs.btrfs" --help 2>&1 | grep -q -- '--compress' || return 1; }
if ! (set +o pipefail; has_compress); then
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  mirror=$(apt-get indextargets --format '$(RELEASE) $(REPO_URI)' \
    | awk -v r="$codename" '$1 == r { print $2; exit }')
  [ -n "$mirror" ] || { echo "no apt source for $codename to take backports from" >&2; exit 2; }
  apt_dir=$(mktemp -d)
  mkdir -p "$apt_dir/lists/partial" "$btrfs_dir"
  echo "deb $mirror $codename-backports main" > "$apt_dir/sources.list"
  apt_opts=(-o Dir::Etc::sourcelist="$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
            -o Dir::State::Lists="$apt_dir/lists" -o APT::Sandbox::User=root)
  echo "fetching btrfs-progs from $codename-backports into $btrfs_dir" >&2
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download -qq "btrfs-progs/$codename-backports")
  dpkg-deb -x "$apt_dir"/btrfs-progs_*.deb "$apt_dir/x"
  rm -rf "${btrfs_dir:?}"/* && cp -a "$apt_dir/x/sbin" "$apt_dir/x/bin" "$btrfs_dir/"
  rm -rf "$apt_dir"
  (set +o pipefail; has_compress)
fi

# xfsprogs of at least 6.17 for XFS roots: `mkfs.xfs -p DIR` populates a filesystem
# from a directory (names of any bytes, hard links, extended attributes, times from
# SOURCE_DATE_EPOCH), and `xfs_db rdump` copies a tree back out as the independent
# reader. No stable Debian release has it yet, so unstable's build is unpacked into a
# private directory with the C library it was linked against, and run through that
# library's loader; nothing on the system changes. apt verifies every package.
xfs_dir="$tools/xfsprogs"
has_populate() { "$xfs_dir/bin/mkfs.xfs" -V 2>/dev/null | awk '{split($3, v, "."); exit !(v[1] > 6 || (v[1] == 6 && v[2] >= 17))}'; }
if ! has_populate; then
  mirror=$(apt-get indextargets --format '$(REPO_URI)' | grep -v security | head -1)
  [ -n "$mirror" ] || { echo "no Debian apt source to take xfsprogs from" >&2; exit 2; }
  apt_dir=$(mktemp -d)
  mkdir -p "$apt_dir/lists/partial"
  echo "deb $mirror unstable main" > "$apt_dir/sources.list"
  apt_opts=(-o Dir::Etc::sourcelist="$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
            -o Dir::State::Lists="$apt_dir/lists" -o APT::Sandbox::User=root)
  echo "fetching xfsprogs and its libraries from unstable into $xfs_dir" >&2
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download -qq \
    xfsprogs/unstable libc6/unstable libinih1/unstable liburcu8t64/unstable \
    libblkid1/unstable libuuid1/unstable)
  for deb in "$apt_dir"/*.deb; do dpkg-deb -x "$deb" "$apt_dir/x"; done
  rm -rf "$xfs_dir" && mkdir -p "$xfs_dir/bin" "$xfs_dir/lib"
  cp -a "$apt_dir/x/usr/sbin" "$xfs_dir/"
  cp -a "$apt_dir"/x/usr/lib/x86_64-linux-gnu/*.so* "$xfs_dir/lib/"
  for tool in mkfs.xfs xfs_db xfs_repair; do
    printf '#!/bin/sh\n# %s from Debian unstable, run with the C library it was built for.\nd=$(dirname "$(readlink -f "$0")")/..\nexec "$d/lib/ld-linux-x86-64.so.2" --library-path "$d/lib" "$d/sbin/%s" "$@"\n' \
      "$tool" "$tool" > "$xfs_dir/bin/$tool"
    chmod +x "$xfs_dir/bin/$tool"
  done
  rm -rf "$apt_dir"
  has_populate || { echo "$xfs_dir/bin/mkfs.xfs cannot populate from a directory" >&2; exit 2; }
fi

# moto (an independent implementation of the EBS, EC2 and S3 APIs) and boto3 (an
# independent client) for the upload tests, in a venv that survives between runs.
venv=${AMIFORGE_VENV:-$HOME/.cache/amiforge/venv}
# cyclonedx-python-lib and spdx-tools are the official libraries of the two SBOM
# formats: their validators check what `amiforge sbom` writes.
if ! "$venv/bin/python" -c 'import moto, boto3, flask, jsonschema, cyclonedx, spdx_tools' 2>/dev/null; then
  echo "installing moto, boto3 and the SBOM validators into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server]>=5.2,<6" "boto3>=1.34,<2" \
    "jsonschema>=4.18,<5" "cyclonedx-python-lib[json-validation]>=8,<12" "spdx-tools>=0.8,<0.9"
fi
