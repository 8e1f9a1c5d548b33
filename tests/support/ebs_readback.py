#!/usr/bin/env python3
"""Reads an EBS snapshot back with boto3, an independent client: every block listed by
ListSnapshotBlocks is fetched with GetSnapshotBlock, its checksum checked, and written
at index * 524288 into a sparse file the size of the volume.

    ebs_readback.py ENDPOINT SNAPSHOT_ID OUT
"""
import base64
import hashlib
import sys

import boto3

BLOCK = 524288  # EBS direct block size; moto reports 512, which is wrong


def main():
    endpoint, snapshot, out = sys.argv[1:4]
    ebs = boto3.client("ebs", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    blocks, token, volume = [], None, None
    while True:
        kw = {"SnapshotId": snapshot}
        if token:
            kw["NextToken"] = token
        page = ebs.list_snapshot_blocks(**kw)
        volume = page["VolumeSize"]
        blocks += page.get("Blocks", [])
        token = page.get("NextToken")
        if not token:
            break
    with open(out, "wb") as f:
        f.truncate(volume << 30)
        for b in blocks:
            got = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
            data = got["BlockData"].read()
            if len(data) != BLOCK:
                sys.exit(f"block {b['BlockIndex']}: {len(data)} bytes")
            digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
            if got.get("Checksum") and got["Checksum"] != digest:
                sys.exit(f"block {b['BlockIndex']}: checksum mismatch")
            f.seek(b["BlockIndex"] * BLOCK)
            f.write(data)
    print(len(blocks))


if __name__ == "__main__":
    main()
