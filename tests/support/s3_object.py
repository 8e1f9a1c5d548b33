"""Reads and tampers with objects in a moto S3 bucket through boto3, an independent
client, for the tests of what amiforge writes to S3.

    python s3_object.py ENDPOINT get BUCKET KEY OUT   # writes the body to OUT; prints
                                                      # {"metadata", "checksum_sha256",
                                                      #  "parts"} as JSON
    python s3_object.py ENDPOINT list BUCKET PREFIX   # prints the keys as a JSON list
    python s3_object.py ENDPOINT flip BUCKET KEY OFFSET   # inverts the byte at OFFSET
"""
import json
import sys

import boto3

endpoint, action = sys.argv[1:3]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
)
if action == "get":
    bucket, key, out = sys.argv[3:6]
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    with open(out, "wb") as f:
        f.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    print(
        json.dumps(
            {
                "metadata": head.get("Metadata", {}),
                "checksum_sha256": head.get("ChecksumSHA256"),
                # A multipart object's ETag is "<md5 of the parts' md5s>-<parts>".
                "parts": int(head["ETag"].strip('"').partition("-")[2] or 1),
            }
        )
    )
elif action == "list":
    bucket, prefix = sys.argv[3:5]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    print(json.dumps(sorted(o["Key"] for o in listed.get("Contents", []))))
elif action == "flip":
    bucket, key, offset = sys.argv[3], sys.argv[4], int(sys.argv[5])
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[offset] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
else:
    sys.exit(f"unknown action {action}")
