"""Puts a file into a moto S3 bucket with boto3's multipart upload (8 MiB parts),
creating the bucket with versioning on: an independent client writes what amiforge
reads. Prints the new object's version id.

    python s3_put.py ENDPOINT BUCKET KEY FILE
"""
import sys

import boto3
from boto3.s3.transfer import TransferConfig

endpoint, bucket, key, path = sys.argv[1:5]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="testing",
    aws_secret_access_key="testing",
)
try:
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
config = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
s3.upload_file(path, bucket, key, Config=config)
print(s3.head_object(Bucket=bucket, Key=key)["VersionId"])
