"""Puts a local file as an S3 object, as another writer of the bucket would: s3_put.py BUCKET KEY FILE.

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)."""

import os
import sys

import boto3

bucket, key, path = sys.argv[1:4]
client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
with open(path, "rb") as f:
    client.put_object(Bucket=bucket, Key=key, Body=f.read())
