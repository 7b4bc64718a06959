"""Azure Blob test helper: the tests' independent client (Microsoft's azure-storage-blob) for the
Azurite emulator they start.

  python azure_blob.py mkcontainer CONTAINER
  python azure_blob.py put CONTAINER LOCAL_DIR PREFIX     upload every file under LOCAL_DIR
  python azure_blob.py get CONTAINER PREFIX LOCAL_DIR     download every blob under PREFIX
  python azure_blob.py ls CONTAINER PREFIX                print "name size" lines

The endpoint comes from AZURITE_BLOB_STORAGE_URL (as for the quickdraw binary with
AZURE_STORAGE_USE_EMULATOR=true); the account is Azurite's well-known development account.
"""
import os
import sys

from azure.storage.blob import BlobServiceClient

# Azurite's published development account (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def service():
    endpoint = os.environ["AZURITE_BLOB_STORAGE_URL"].rstrip("/")
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={endpoint}/{ACCOUNT};"
    )
    return BlobServiceClient.from_connection_string(conn)


def main(argv):
    cmd, args = argv[1], argv[2:]
    svc = service()
    if cmd == "mkcontainer":
        svc.create_container(args[0])
        return
    container = svc.get_container_client(args[0])
    if cmd == "put":
        local, prefix = args[1], args[2]
        for root, _, files in os.walk(local):
            for f in sorted(files):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                with open(path, "rb") as data:
                    container.upload_blob(f"{prefix.rstrip('/')}/{rel}", data, overwrite=True)
    elif cmd in ("get", "ls"):
        prefix = args[1].rstrip("/") + "/"
        for b in container.list_blobs(name_starts_with=prefix):
            rel = b.name[len(prefix):]
            if cmd == "ls":
                print(rel, b.size)
                continue
            to = os.path.join(args[2], rel)
            os.makedirs(os.path.dirname(to), exist_ok=True)
            with open(to, "wb") as out:
                out.write(container.download_blob(b.name).readall())
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
