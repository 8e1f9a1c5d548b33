#!/usr/bin/env python3
"""Prints ec2:DescribeImages for one AMI as JSON, through boto3 (an independent client).

    describe_image.py ENDPOINT IMAGE_ID
"""
import json
import sys

import boto3

endpoint, image_id = sys.argv[1:3]
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
images = ec2.describe_images(ImageIds=[image_id])["Images"]
print(json.dumps(images[0], default=str))
