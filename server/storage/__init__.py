"""File storage for outputs, uploads and job inputs (see `base.Storage`).

`open_storage(url)` is the only way the API and the workers get one: the `storage` setting names
it by URL (`file:///srv/ovi/files`, the default under the data dir), and each backend is one
module plus one entry in `BACKENDS` (an `s3://` backend is the next).
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

BACKENDS: dict[str, Callable[[str], Storage]] = {"file": LocalStorage.from_url}


def check_storage_url(url: str) -> str:
    """`url` if a backend serves its scheme; a ValueError naming the supported ones otherwise."""
    scheme = urlsplit(url).scheme if ":" in url else ""
    if scheme not in BACKENDS:
        supported = ", ".join(f"{name}://" for name in BACKENDS)
        raise ValueError(f"unsupported storage URL {url!r}: the supported schemes are {supported}")
    return url


def open_storage(url: str) -> Storage:
    """Open the storage `url` names, e.g. `file:///srv/ovi/files`."""
    return BACKENDS[urlsplit(check_storage_url(url)).scheme](url)
