#!/usr/bin/env python3
"""Prints a mkfs.xfs protofile (see mkfs.xfs(8)) of the tree DIR: its directories,
symlinks and files (by path, so mkfs.xfs copies their contents), owned by root.

    scripts/xfs-protofile.py DIR > PROTO && mkfs.xfs -p PROTO IMAGE
"""
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
