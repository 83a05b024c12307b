"""Bundles in an S3-compatible bucket (``bundle_store = "s3"``, the ``[s3]`` extra): the controller
authorises a download, the bucket serves it through a short-lived presigned URL.

The bucket is the store of record (``<prefix><sha256>``); the local directory stages uploads (streamed and
hashed exactly as :class:`BlobStore` does) and keeps a cache of what the controller itself reads (bundle
builds, retraining), filled from the bucket on a miss, so every controller on the same bucket can read
every bundle. boto3's and botocore's errors become :class:`TransportError` here, at the boundary.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from edgefleet.cloud.store.blobs import BlobStore, Incoming
from edgefleet.protocol.errors import NotFoundError, TransportError

PresignedMethod = Literal["GET", "HEAD"]
_OPERATION = {"GET": "get_object", "HEAD": "head_object"}


class S3BlobStore(BlobStore):
    def __init__(self, root: Path, *, client: Any, bucket: str, prefix: str = "",
                 presign_client: Any | None = None, content_type: str = "application/octet-stream") -> None:
        super().__init__(root)
        self.client = client
        self.presign_client = presign_client or client
        self.bucket = bucket
        self.prefix = prefix
        self.content_type = content_type

    @classmethod
    def connect(cls, root: Path, *, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                presign_endpoint_url: str | None = None, region: str = "us-east-1",
                addressing_style: str = "auto", access_key_id: str | None = None,
                secret_access_key: str | None = None, content_type: str = "application/octet-stream",
                ) -> S3BlobStore:
        """A store on ``bucket`` (which must exist); no request is made until the first use."""
        config = Config(signature_version="s3v4", s3={"addressing_style": addressing_style},
                        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                        region_name=region)
        client = session.client("s3", endpoint_url=endpoint_url, config=config)
        presign = (session.client("s3", endpoint_url=presign_endpoint_url, config=config)
                   if presign_endpoint_url else None)
        return cls(root, client=client, bucket=bucket, prefix=prefix, presign_client=presign,
                   content_type=content_type)

    def key(self, digest: str) -> str:
        return f"{self.prefix}{self.path(digest).name}"   # path() checks that it is a sha256 digest

    def commit(self, incoming: Incoming) -> Path:
        """Upload to the bucket first (a failure stores nothing and drops the upload), then keep it cached."""
        key = self.key(incoming.digest)
        try:
            self.client.upload_file(str(incoming.path), self.bucket, key,
                                    ExtraArgs={"ContentType": self.content_type})
        except (Boto3Error, BotoCoreError, ClientError, OSError) as exc:   # S3UploadFailedError is boto3's
            self.discard(incoming)
            raise self._failed("upload of", key, exc) from None
        return super().commit(incoming)

    def open_path(self, digest: str) -> Path:
        """The cached file, fetched from the bucket first when this controller has not got it."""
        path = self.path(digest)
        if path.is_file():
            return path
        key = self.key(digest)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".fetch-")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, key, name)
            os.replace(name, path)
        except ClientError as exc:
            os.unlink(name)
            if _status(exc) == 404:
                raise NotFoundError(f"no stored file {digest}", where="digest") from None
            raise self._failed("download of", key, exc) from None
        except (BotoCoreError, OSError) as exc:
            os.unlink(name)
            raise self._failed("download of", key, exc) from None
        return path

    def delete(self, digest: str) -> None:
        """The object first: if the bucket refuses, the caller's transaction rolls back with everything in place."""
        key = self.key(digest)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("deletion of", key, exc) from None
        super().delete(digest)

    def presigned_url(self, digest: str, *, method: PresignedMethod = "GET", expires_in: int = 300,
                      disposition: str | None = None) -> str:
        """A URL that lets anyone holding it ``GET`` (or ``HEAD``) this one object for ``expires_in`` seconds,
        answered with ``disposition`` as its ``Content-Disposition``. Signed locally: no request to the store."""
        params = {"Bucket": self.bucket, "Key": self.key(digest)}
        if disposition:
            params["ResponseContentDisposition"] = disposition
        try:
            url: str = self.presign_client.generate_presigned_url(_OPERATION[method], Params=params,
                                                                  ExpiresIn=max(1, int(expires_in)))
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("presigning of", params["Key"], exc) from None
        return url

    def _failed(self, what: str, key: str, exc: Exception) -> TransportError:
        return TransportError(f"{what} s3://{self.bucket}/{key} failed: {_describe(exc)}", where="bundle_store",
                              hint="check s3_endpoint_url, the bucket and the credentials (docs/operations.md "
                                   "\"Downloads that scale\")")


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _describe(exc: Exception) -> str:
    """What went wrong, without the controller's local file names (boto3's upload error names the temp file)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    if isinstance(exc, Boto3Error):
        return str(exc).split(": ", 1)[-1]   # "Failed to upload <temp file> to <bucket/key>: <why>"
    return str(exc)
