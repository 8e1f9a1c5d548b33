#!/usr/bin/env bash
# Writes the bootable Debian 12 root the build and boot tests use (once; later calls
# reuse it) and prints its path: debootstrap with what a cloud image boots with (the
# cloud kernel, GRUB's EFI and BIOS modules, cloud-init, openssh-server).
#
#   scripts/make-boot-tree.sh DIR        (the tree is DIR/debian-boot-root)
#
# The package archive is whatever this host's apt uses (AMIFORGE_DEBIAN_MIRROR
# overrides it), as for the other fixtures. The package list is part of the stamp:
# changing it makes the tree again.
set -euo pipefail
dir=$1
mkdir -p "$dir"
root=$dir/debian-boot-root
# debootstrap does not resolve virtual packages: python3-cffi-backend provides the
# python3-cffi-backend-api-* that python3-cryptography (for cloud-init) needs.
include=linux-image-cloud-amd64,grub-efi-amd64-bin,grub-pc-bin,cloud-init,openssh-server,python3-cffi-backend
if [ "$(cat "$root.done" 2>/dev/null)" != "$include" ]; then
  mirror=${AMIFORGE_DEBIAN_MIRROR:-$(
    { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
      awk '/^URIs:/ {print $2} $1 == "deb" {print $2}' | grep -v security | head -1 || true)}
  [ -n "$mirror" ] || { echo "no Debian mirror in this host's apt sources; set AMIFORGE_DEBIAN_MIRROR" >&2; exit 2; }
  echo "debootstrap of a bootable Debian 12 root into $root (several minutes)..." >&2
  rm -rf "$root" "$root.done"
  debootstrap --include="$include" bookworm "$root" "$mirror" > "$dir/debian-boot-root.log" 2>&1 ||
    { tail -20 "$dir/debian-boot-root.log" >&2; exit 2; }
  # apt's downloaded packages are not part of an image.
  rm -f "$root"/var/cache/apt/archives/*.deb
  echo "$include" > "$root.done"
fi
echo "$root"
