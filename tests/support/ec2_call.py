#!/usr/bin/env python3
"""Calls one AWS API operation through boto3 (an independent client) and prints the
response as JSON. The operation is EC2's unless it is prefixed with a service.

    ec2_call.py ENDPOINT REGION [SERVICE:]OPERATION 'JSON_KWARGS'
    e.g. ec2_call.py http://127.0.0.1:5000 us-east-1 describe_images '{"ImageIds": ["ami-1"]}'
         ec2_call.py http://127.0.0.1:5000 us-east-1 ssm:get_parameter '{"Name": "/a"}'
"""
import json
import sys

import boto3

endpoint, region, operation, kwargs = sys.argv[1:5]
service, _, operation = operation.rpartition(":")
client = boto3.client(service or "ec2", endpoint_url=endpoint, region_name=region,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
response = getattr(client, operation)(**json.loads(kwargs))
response.pop("ResponseMetadata", None)
print(json.dumps(response, default=str))
