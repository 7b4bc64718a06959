"""S3 test helper: the tests' independent client (boto3) for the S3-API server they start.

  python s3.py mkbucket BUCKET
  python s3.py put BUCKET LOCAL_DIR PREFIX     upload every file under LOCAL_DIR
  python s3.py get BUCKET PREFIX LOCAL_DIR     download every object under PREFIX
  python s3.py ls BUCKET PREFIX                print "key size" lines
  python s3.py rm BUCKET KEY                   delete one object

Endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
AWS_REGION, as for the quickdraw binary.
"""
import os
import sys

import boto3


def client():
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])


def main(argv):
    cmd, args = argv[1], argv[2:]
    s3 = client()
    if cmd == "mkbucket":
        s3.create_bucket(Bucket=args[0])
    elif cmd == "put":
        bucket, local, prefix = args
        for root, _, files in os.walk(local):
            for f in sorted(files):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                s3.upload_file(path, bucket, f"{prefix.rstrip('/')}/{rel}")
    elif cmd in ("get", "ls"):
        bucket, prefix = args[0], args[1].rstrip("/") + "/"
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for o in page.get("Contents", []):
                rel = o["Key"][len(prefix):]
                if cmd == "ls":
                    print(rel, o["Size"])
                    continue
                to = os.path.join(args[2], rel)
                os.makedirs(os.path.dirname(to), exist_ok=True)
                s3.download_file(bucket, o["Key"], to)
    elif cmd == "rm":
        s3.delete_object(Bucket=args[0], Key=args[1])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
