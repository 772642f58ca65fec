"""`S3Storage`: `s3://bucket/prefix` on any S3-compatible store (AWS, MinIO, Ceph RGW, ...).

The object for key `{kind}/{id}/{name}` is `{prefix}/{kind}/{id}/{name}`. boto3 finds the
endpoint and the credentials in the standard AWS places (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, profiles, instance roles).
A PUT replaces an object atomically, so readers never see a partial file.

URLs: by default `/files/{key}`, served by every API replica from the bucket (with Range, see
`server.routes.files`); with `?presign=1` (the `s3_presign` setting, `OVI_S3_PRESIGN=1`), a
pre-signed GET URL on the store itself, valid for `?presign_ttl=` seconds (default 7 days, the
S3 maximum), so the bytes skip the API.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from server.storage.base import FILES_PREFIX, Storage, StoredFile, check_key, content_type_of

CHUNK_BYTES = 64 * 1024
_MAX_PRESIGN_S = 7 * 24 * 3600


def parse_s3_url(url: str) -> tuple[str, str, bool, int]:
    """(bucket, prefix, presign, presign_ttl_s) of `s3://bucket/prefix[?presign=1]`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"an S3 storage URL is s3://bucket/prefix, not {url!r}")
    query = parse_qs(parts.query)
    presign = query.pop("presign", ["0"])[0] in ("1", "true", "yes")
    ttl = int(query.pop("presign_ttl", [str(_MAX_PRESIGN_S)])[0])
    if query or parts.fragment:
        raise ValueError(f"unknown S3 storage option(s) {sorted(query)} in {url!r}")
    if not 1 <= ttl <= _MAX_PRESIGN_S:
        raise ValueError(f"presign_ttl must be 1..{_MAX_PRESIGN_S} seconds, not {ttl}")
    return parts.netloc, parts.path.strip("/"), presign, ttl


class S3Storage(Storage):
    """`server.storage.base.Storage` on an S3 bucket (creates the bucket if it is missing)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        presign: bool = False,
        presign_ttl_s: int = _MAX_PRESIGN_S,
        client: Any = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presign = presign
        self.presign_ttl_s = presign_ttl_s
        self._client = client or boto3.client(
            "s3",
            config=Config(
                connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )
        self._ensure_bucket()

    @classmethod
    def from_url(cls, url: str) -> S3Storage:
        bucket, prefix, presign, ttl = parse_s3_url(url)
        return cls(bucket, prefix, presign=presign, presign_ttl_s=ttl)

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            self._client.create_bucket(Bucket=self.bucket)

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _missing(exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def write(self, key: str, data: bytes, **conditions: str) -> None:
        self._client.put_object(
            Bucket=self.bucket,
            Key=self._object(key),
            Body=data,
            ContentType=content_type_of(key.rsplit("/", 1)[-1]),
            **conditions,
        )

    def write_new(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:  # S3's conditional write: refused if the object exists
            self.write(key, data, IfNoneMatch="*")
        except ClientError as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def stat(self, key: str) -> StoredFile:
        from botocore.exceptions import ClientError

        name = self._object(key).rsplit("/", 1)[-1]
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from None
            raise
        modified: datetime = head["LastModified"]
        return StoredFile(
            key=key,
            url=self.url(key),
            content_type=content_type_of(name),
            file_name=name,
            file_size=int(head["ContentLength"]),
            modified=modified.timestamp(),
        )

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        if end is not None and end <= start:
            self.stat(key)  # still a FileNotFoundError for a missing key
            return iter(())
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._object(key)}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            body = self._client.get_object(**request)["Body"]
        except ClientError as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return iter(())  # starts past the end: nothing to read
            raise
        return _chunks(body)

    def url(self, key: str) -> str:
        if not self.presign:
            return f"{FILES_PREFIX}/{key}"
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object(key)},
            ExpiresIn=self.presign_ttl_s,
        )

    def delete(self, key: str) -> bool:
        try:
            self.stat(key)
        except FileNotFoundError:
            return False
        self._client.delete_object(Bucket=self.bucket, Key=self._object(key))
        return True

    def sweep(self, retention_s: float, *, now: float | None = None) -> int:
        import time

        cutoff = (time.time() if now is None else now) - retention_s
        paginator = self._client.get_paginator("list_objects_v2")
        deleted = 0
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            old = [
                {"Key": item["Key"]}
                for item in page.get("Contents", [])
                if item["LastModified"].timestamp() < cutoff
            ]
            if old:
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": old})
                deleted += len(old)
        return deleted

    def close(self) -> None:
        self._client.close()


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()
