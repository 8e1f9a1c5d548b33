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
  python3 python3-venv
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# moto (an independent implementation of the EBS, EC2 and S3 APIs) and boto3 (an
# independent client) for the upload tests, in a venv that survives between runs.
venv=${AMIFORGE_VENV:-$HOME/.cache/amiforge/venv}
if ! "$venv/bin/python" -c 'import moto, boto3, flask' 2>/dev/null; then
  echo "installing moto and boto3 into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server]>=5.2,<6" "boto3>=1.34,<2"
fi
