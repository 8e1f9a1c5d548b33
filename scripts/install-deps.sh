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
  qemu-utils       # qemu-img: the qcow2, VMDK, VHD and VHDX containers of the input tests
  qemu-system-x86 ovmf seabios   # boot-test: QEMU with UEFI (OVMF) and legacy (SeaBIOS) firmware
  grub-common      # grub-mkimage: build assembles GRUB's images from the tree's own modules
  openssh-client openssl zstd xz-utils   # planted keys, compressed logs
  python3 python3-venv
)
missing_packages() {
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
# Two rounds: installing qemu-system-x86 may remove a qemu-utils of another release
# (a machine can come with a newer one), and the second round puts it back.
for round in 1 2; do
  missing_packages
  [ ${#missing[@]} -gt 0 ] || break
  echo "installing (round $round): ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ "$round" -gt 1 ] || $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
missing_packages
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
