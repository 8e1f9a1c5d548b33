#!/usr/bin/env bash
# Writes a bootable Debian 12 root the build and boot tests use (once; later calls
# reuse it) and prints its path: debootstrap with what a cloud image boots with (the
# cloud kernel, GRUB's EFI modules, and for amd64 its BIOS modules, cloud-init,
# openssh-server).
#
#   scripts/make-boot-tree.sh DIR            (amd64: DIR/debian-boot-root)
#   scripts/make-boot-tree.sh DIR arm64      (DIR/debian-boot-root-arm64)
#
# An arm64 tree's maintainer scripts run under qemu-user-static, through the
# kernel's binfmt_misc: the handler is registered here if it is not yet (with the F
# flag, so the emulator is found inside the chroot). That takes root, as
# debootstrap does.
#
# The package archive is whatever this host's apt uses (AMIFORGE_DEBIAN_MIRROR
# overrides it), as for the other fixtures. The package list is part of the stamp:
# changing it makes the tree again.
set -euo pipefail
dir=$1
arch=${2:-amd64}
mkdir -p "$dir"
# debootstrap does not resolve virtual packages: python3-cffi-backend provides the
# python3-cffi-backend-api-* that python3-cryptography (for cloud-init) needs.
case $arch in
  amd64)
    root=$dir/debian-boot-root
    include=linux-image-cloud-amd64,grub-efi-amd64-bin,grub-pc-bin,cloud-init,openssh-server,python3-cffi-backend ;;
  arm64)
    root=$dir/debian-boot-root-arm64
    include=linux-image-cloud-arm64,grub-efi-arm64-bin,cloud-init,openssh-server,python3-cffi-backend ;;
  *) echo "no boot tree for architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
if [ "$(cat "$root.done" 2>/dev/null)" != "$include" ]; then
  mirror=${AMIFORGE_DEBIAN_MIRROR:-$(
    { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
      awk '/^URIs:/ {print $2} $1 == "deb" {print $2}' | grep -v security | head -1 || true)}
  [ -n "$mirror" ] || { echo "no Debian mirror in this host's apt sources; set AMIFORGE_DEBIAN_MIRROR" >&2; exit 2; }
  if [ "$arch" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
    binfmt=/proc/sys/fs/binfmt_misc
    [ -e $binfmt/register ] || mount -t binfmt_misc binfmt_misc $binfmt
    if [ ! -e $binfmt/qemu-aarch64 ]; then
      conf=/usr/lib/binfmt.d/qemu-aarch64.conf
      [ -f $conf ] || { echo "$conf is missing: install qemu-user-static" >&2; exit 2; }
      cat $conf > $binfmt/register
    fi
  fi
  echo "debootstrap of a bootable Debian 12 $arch root into $root (several minutes)..." >&2
  rm -rf "$root" "$root.done"
  debootstrap --arch "$arch" --include="$include" bookworm "$root" "$mirror" > "$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; exit 2; }
  # apt's downloaded packages are not part of an image.
  rm -f "$root"/var/cache/apt/archives/*.deb
  echo "$include" > "$root.done"
fi
echo "$root"
