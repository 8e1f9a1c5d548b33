#!/usr/bin/env bash
# Writes the real-distribution benchmark tree (once; later calls reuse it) and prints
# its path: a Debian 12 root made by debootstrap with what a cloud image holds (the
# cloud kernel, cloud-init, openssh-server, python3), with a freshly planted secret
# for each amiforge rule added (DIR/expected.json says where).
#
#   scripts/bench-debian-tree.sh DIR
#
# The package archive is whatever this host's apt uses (AMIFORGE_DEBIAN_MIRROR
# overrides it), as for the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
mkdir -p "$dir"
root=$dir/debian-cloud-root
tree=$dir/tree-debian
if [ ! -f "$root.done" ]; then
  mirror=${AMIFORGE_DEBIAN_MIRROR:-$(
    { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } |
      awk '/^URIs:/ {print $2} $1 == "deb" {print $2}' | grep -v security | head -1 || true)}
  [ -n "$mirror" ] || { echo "no Debian mirror in this host's apt sources; set AMIFORGE_DEBIAN_MIRROR" >&2; exit 2; }
  echo "debootstrap of a Debian 12 cloud root into $root (several minutes)..." >&2
  rm -rf "$root"
  # debootstrap does not resolve virtual packages: python3-cffi-backend provides the
  # python3-cffi-backend-api-* that python3-cryptography (for cloud-init) needs.
  debootstrap --include=linux-image-cloud-amd64,cloud-init,openssh-server,python3,python3-cffi-backend \
    bookworm "$root" "$mirror" > "$dir/debootstrap.log" 2>&1 ||
    { tail -20 "$dir/debootstrap.log" >&2; exit 2; }
  touch "$root.done"
fi
if [ ! -f "$tree.done" ] || [ "$root.done" -nt "$tree.done" ]; then
  echo "copying the root to $tree and planting the secrets..." >&2
  rm -rf "$tree" "$dir/clean"
  cp -a "$root" "$tree"
  python3 tests/support/plant_secrets.py "$tree" "$dir/clean" "$dir/expected.json"
  touch "$tree.done"
fi
echo "$tree"
