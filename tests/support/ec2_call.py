#!/usr/bin/env python3
"""Calls one EC2 API operation through boto3 (an independent client) and prints the
response as JSON.

    ec2_call.py ENDPOINT REGION OPERATION 'JSON_KWARGS'
    e.g. ec2_call.py http://127.0.0.1:5000 us-east-1 describe_images '{"ImageIds": ["ami-1"]}'
"""
import json
import sys

import boto3

endpoint, region, operation, kwargs = sys.argv[1:5]
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region,
                   aws_access_key_id="testing", aws_secret_access_key="testing")
response = getattr(ec2, operation)(**json.loads(kwargs))
response.pop("ResponseMetadata", None)
print(json.dumps(response, default=str))
