"""File storage for outputs, uploads and job inputs (see `base.Storage`).

`open_storage(url)` is the only way the API and the workers get one: the `storage` setting names
it by URL (`file:///srv/ovi/files`, the default under the data dir), and each backend is one
module plus one entry in `BACKENDS`: `file://` and `s3://bucket/prefix`.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from server.storage.base import (
    FILES_PREFIX,
    KINDS,
    PUBLIC_KINDS,
    Kind,
    Storage,
    StoredFile,
    check_key,
    file_owner_tag,
    key_from_path,
    new_file_id,
    owned_file_id,
    owner_tag,
    read_all,
    sanitize_content_type,
    sanitize_file_name,
)
from server.storage.local import LocalStorage

__all__ = [
    "BACKENDS",
    "FILES_PREFIX",
    "KINDS",
    "PUBLIC_KINDS",
    "Kind",
    "LocalStorage",
    "Storage",
    "StoredFile",
    "check_key",
    "check_storage_url",
    "file_owner_tag",
    "key_from_path",
    "new_file_id",
    "owned_file_id",
    "owner_tag",
    "open_storage",
    "read_all",
    "sanitize_content_type",
    "sanitize_file_name",
]


def _s3(url: str) -> Storage:
    from server.storage.s3 import S3Storage  # boto3 loads only when used

    return S3Storage.from_url(url)


BACKENDS: dict[str, Callable[[str], Storage]] = {"file": LocalStorage.from_url, "s3": _s3}


def check_storage_url(url: str) -> str:
    """`url` if a backend serves its scheme; a ValueError naming the supported ones otherwise."""
    scheme = urlsplit(url).scheme if ":" in url else ""
    if scheme not in BACKENDS:
        supported = ", ".join(f"{name}://" for name in BACKENDS)
        raise ValueError(f"unsupported storage URL {url!r}: the supported schemes are {supported}")
    if scheme == "s3":
        from server.storage.s3 import parse_s3_url

        parse_s3_url(url)
    return url


def open_storage(url: str) -> Storage:
    """Open the storage `url` names, e.g. `file:///srv/ovi/files`."""
    return BACKENDS[urlsplit(check_storage_url(url)).scheme](url)
