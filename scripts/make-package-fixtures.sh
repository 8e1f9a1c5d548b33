#!/usr/bin/env bash
# Builds the package-database fixtures into OUTDIR/packages: root filesystems whose
# files were installed by a package manager and then changed, with that manager's own
# verdict beside them.
#
#   rpm-files.img    ext4 (bare). Two packages installed by rpm into the tree (one with
#                    SHA-256 file digests, one with MD5), then a binary, a %config
#                    file and a data file changed, a documentation file deleted and an
#                    unowned file added. rpm-files.rpm-V is `rpm -V -a` on that tree.
#   alpine.img       ext4 (bare). An Alpine-shaped root whose lib/apk/db/installed
#                    carries Z:Q1 checksums of its files (written here from the files,
#                    as apk writes them: apk-tools is not packaged for this system),
#                    then one file changed. alpine.changed lists it.
#
#   scripts/make-package-fixtures.sh [OUTDIR]      (default: fixtures/build)
#
# Its own stamp, like make-foreign-fixtures.sh. Needs rpm and rpmbuild.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/fixtures/build}/packages
mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp="$out/.stamp"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "package fixtures up to date in $out" >&2
  exit 0
fi

export PATH="$PATH:/usr/sbin:/sbin"
export E2FSPROGS_FAKE_TIME=1700000000 SOURCE_DATE_EPOCH=1700000000 TZ=UTC
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -f "$out"/*.img
bytes() { python3 -c "import random, sys; random.seed($2); sys.stdout.buffer.write(random.randbytes($1))"; }

# --- rpm-files.img
tree="$work/rpm-root"
mkdir -p "$tree/usr/lib" "$tree/etc"
printf 'NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n' \
  > "$tree/usr/lib/os-release"
ln -s ../usr/lib/os-release "$tree/etc/os-release"
top="$work/rpmbuild"
mkdir -p "$top/SOURCES"
cp /bin/true "$top/SOURCES/hello"
bytes 20000 401 > "$top/SOURCES/libhello.so.1"
bytes 3000 402 > "$top/SOURCES/data.bin"
cat > "$top/hello.spec" <<'SPEC'
Name: hello
Version: 2.12
Release: 1.el9
Summary: fixture
License: MIT
BuildArch: x86_64
%description
fixture
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib64 %{buildroot}/etc %{buildroot}/usr/share/doc/hello %{buildroot}/var/log
cp %{_sourcedir}/hello %{buildroot}/usr/bin/hello
ln -s hello %{buildroot}/usr/bin/hi
cp %{_sourcedir}/libhello.so.1 %{buildroot}/usr/lib64/libhello.so.1
printf 'greeting = hello\n' > %{buildroot}/etc/hello.conf
printf 'read me\n' > %{buildroot}/usr/share/doc/hello/README
touch %{buildroot}/var/log/hello.log
%files
/usr/bin/hello
/usr/bin/hi
/usr/lib64/libhello.so.1
%config(noreplace) /etc/hello.conf
%doc /usr/share/doc/hello/README
%ghost /var/log/hello.log
SPEC
cat > "$top/legacy.spec" <<'SPEC'
Name: legacy
Version: 1.0
Release: 3.el9
Summary: fixture with MD5 file digests
License: MIT
BuildArch: noarch
%description
fixture
%install
mkdir -p %{buildroot}/usr/share/legacy
cp %{_sourcedir}/data.bin %{buildroot}/usr/share/legacy/data.bin
printf 'unchanged\n' > %{buildroot}/usr/share/legacy/notes.txt
%files
/usr/share/legacy/data.bin
/usr/share/legacy/notes.txt
SPEC
build() {
  rpmbuild -bb --quiet --define "_topdir $top" --define "_sourcedir $top/SOURCES" \
    --define "_build_id_links none" --define "debug_package %{nil}" \
    --define "__os_install_post %{nil}" "$@" >/dev/null
}
build "$top/hello.spec"
build --define "_binary_filedigest_algorithm 1" "$top/legacy.spec"
rpmdb=(--define "_db_backend sqlite" --dbpath /var/lib/rpm)
rpm --root "$tree" "${rpmdb[@]}" --initdb
rpm --root "$tree" "${rpmdb[@]}" -i --nodeps --noscripts --ignorearch --ignoreos \
  $(find "$top/RPMS" -name '*.rpm' | sort)
# The changes rpm -V must see: a binary, a %config file and an MD5-digested data file
# changed, a %doc file deleted; and a file no package ships.
printf 'patched' >> "$tree/usr/bin/hello"
printf 'greeting = changed\n' > "$tree/etc/hello.conf"
printf 'x' >> "$tree/usr/share/legacy/data.bin"
rm "$tree/usr/share/doc/hello/README"
printf '#!/bin/sh\n' > "$tree/usr/bin/dropped-in"
find "$tree" -exec touch -h -d @1700000000 {} +
rpm --root "$tree" "${rpmdb[@]}" -V --nodeps -a 2>/dev/null > "$out/rpm-files.rpm-V" || true
truncate -s 64M "$work/rpm-files.img"
mkfs.ext4 -q -F -U 4b1d0000-0000-4000-8000-000000000020 -d "$tree" "$work/rpm-files.img"
mv "$work/rpm-files.img" "$out/rpm-files.img"

# --- alpine.img
atree="$work/alpine"
mkdir -p "$atree"/{bin,lib,etc,lib/apk/db,usr/bin}
printf 'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.18.4\nPRETTY_NAME="Alpine Linux v3.18"\n' > "$atree/etc/os-release"
bytes 40000 411 > "$atree/lib/ld-musl-x86_64.so.1"
ln -s ld-musl-x86_64.so.1 "$atree/lib/libc.musl-x86_64.so.1"
bytes 30000 412 > "$atree/bin/busybox"
printf 'Welcome to Alpine!\n' > "$atree/etc/motd"
printf 'alpine\n' > "$atree/etc/hostname"
# apk's checksum: "Q1" and the base64 SHA-1 of the file (of a symlink: of its target).
q1() {
  python3 -c 'import base64, hashlib, os, sys
p = sys.argv[1]
data = os.readlink(p).encode() if os.path.islink(p) else open(p, "rb").read()
print("Q1" + base64.b64encode(hashlib.sha1(data).digest()).decode(), end="")' "$1"
}
{
  printf 'C:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\nP:musl\nV:1.2.4-r2\nA:x86_64\nS:383152\nI:622592\nT:the musl c library\nU:https://musl.libc.org/\nL:MIT\no:musl\nm:Maintainer <m@example.org>\nt:1700000000\nc:0000000000000000000000000000000000000000\n'
  printf 'F:lib\nR:ld-musl-x86_64.so.1\na:0:0:755\nZ:%s\nR:libc.musl-x86_64.so.1\na:0:0:777\nZ:%s\n\n' \
    "$(q1 "$atree/lib/ld-musl-x86_64.so.1")" "$(q1 "$atree/lib/libc.musl-x86_64.so.1")"
  printf 'C:Q1BBBBBBBBBBBBBBBBBBBBBBBBBBB=\nP:busybox\nV:1.36.1-r5\nA:x86_64\no:busybox\n'
  printf 'F:bin\nR:busybox\na:0:0:755\nZ:%s\n\n' "$(q1 "$atree/bin/busybox")"
  printf 'C:Q1CCCCCCCCCCCCCCCCCCCCCCCCCCC=\nP:alpine-baselayout-data\nV:3.4.3-r1\nA:x86_64\no:alpine-baselayout\n'
  printf 'F:etc\nR:motd\nZ:%s\nR:hostname\nZ:%s\n\n' "$(q1 "$atree/etc/motd")" "$(q1 "$atree/etc/hostname")"
} > "$atree/lib/apk/db/installed"
# The change the audit must see: busybox replaced after installation.
printf 'tampered' >> "$atree/bin/busybox"
echo /bin/busybox > "$out/alpine.changed"
find "$atree" -exec touch -h -d @1700000000 {} +
truncate -s 16M "$work/alpine.img"
mkfs.ext4 -q -F -U 4b1d0000-0000-4000-8000-000000000021 -d "$atree" "$work/alpine.img"
mv "$work/alpine.img" "$out/alpine.img"

echo "$want" > "$stamp"
echo "package fixtures in $out" >&2
