"""The `Storage` protocol: where outputs, uploads and job inputs live, as bytes under a key.

A key is `{kind}/{id}/{name}`: the kind (`outputs`, `uploads`, `inputs`), 128 random bits and a
sanitised file name, so a key is an unguessable capability and the client's own path never
reaches a backend. Every backend serves the same keys; `server.storage.open_storage` picks one by
the `storage` URL setting, and `tests/contract` holds each to the same behaviour.

The API serves `outputs` and `uploads` at `/files/{key}` (`server.routes.files`, with Range);
`inputs` (a job's image, kept only until the job is done) are never served.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
import secrets
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

Kind = Literal["outputs", "uploads", "inputs"]
KINDS: tuple[Kind, ...] = ("outputs", "uploads", "inputs")
PUBLIC_KINDS: tuple[Kind, ...] = ("outputs", "uploads")
FILES_PREFIX = "/files"  # where the API serves public keys

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_MAX_NAME = 120


@dataclass(frozen=True)
class StoredFile:
    """What a backend knows about one stored file."""

    key: str
    url: str  # where clients fetch it: `/files/{key}` (made absolute per request), or absolute
    content_type: str
    file_name: str
    file_size: int
    modified: float  # unix seconds


class Storage(ABC):
    """Bytes in under a fresh key, bytes (or a byte range) out. Safe across processes.

    `save` is the same for every backend (it sanitises and makes the key); a backend implements
    the abstract methods below it."""

    # Told `(kind, bytes)` after each save (the API's storage-bytes metric, server.metrics).
    on_save: Callable[[str, int], None] | None = None

    def save(
        self,
        data: bytes,
        *,
        kind: Kind,
        content_type: str,
        file_name: str | None,
        file_id: str | None = None,
        exclusive: bool = False,
    ) -> StoredFile:
        """Store `data` under `{kind}/{file_id or a fresh id}/{sanitised name}` and return it;
        saving again under the same key replaces the file, unless `exclusive`: then
        `FileExistsError` (`write_new`). Readers never see a partial file."""
        content_type = sanitize_content_type(content_type)
        key = make_key(kind, file_id or new_file_id(), sanitize_file_name(file_name, content_type))
        if not exclusive:
            self.write(key, data)
        elif not self.write_new(key, data):
            raise FileExistsError(key)
        stored = self.stat(key)
        if self.on_save is not None:
            self.on_save(kind, stored.file_size)
        return stored

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Store `data` under a checked key, atomically: readers see the old bytes or the new."""

    def write_new(self, key: str, data: bytes) -> bool:
        """`write` only if nothing is stored under `key`; False (nothing written) if something
        is. Backends make the check and the write one step (single-use upload URLs, even across
        API replicas); this default checks, then writes."""
        try:
            self.stat(key)
        except FileNotFoundError:
            self.write(key, data)
            return True
        return False

    @abstractmethod
    def stat(self, key: str) -> StoredFile:
        """The file's metadata; `FileNotFoundError` for a missing, expired or malformed key."""

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes `start` to `end` (exclusive; None: to the end) in chunks; `FileNotFoundError`
        is raised by the call, not by the first chunk."""

    @abstractmethod
    def url(self, key: str) -> str:
        """Where clients fetch this key (a path on the API, or an absolute URL)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the file; False if there was none."""

    @abstractmethod
    def sweep(self, retention_s: float, *, now: float | None = None) -> int:
        """Delete files stored longer ago than `retention_s`; return how many."""

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to release
        """Release what the backend holds."""


def read_all(storage: Storage, key: str) -> bytes:
    return b"".join(storage.read(key))


def new_file_id() -> str:
    """A fresh random id (22 URL-safe characters, 128 bits)."""
    return secrets.token_urlsafe(16)


_OWNER_TAG_CHARS = 12
_RANDOM_ID_CHARS = 22


def owner_tag(user_id: str) -> str:
    """A short, stable tag of a user id (not a secret: it only lets /files compare owners)."""
    digest = hashlib.sha256(user_id.encode()).digest()[:9]
    return base64.urlsafe_b64encode(digest).decode("ascii")  # 12 characters


def owned_file_id(user_id: str) -> str:
    """A fresh random id that also names its owner: 22 random characters, then `owner_tag`."""
    return new_file_id() + owner_tag(user_id)


def file_owner_tag(file_id: str) -> str | None:
    """The owner tag of an id made by `owned_file_id`, or None for an id without one."""
    if len(file_id) != _RANDOM_ID_CHARS + _OWNER_TAG_CHARS:
        return None
    return file_id[_RANDOM_ID_CHARS:]


def make_key(kind: str, file_id: str, name: str) -> str:
    """`{kind}/{id}/{name}` after checking each part; ValueError for anything else."""
    if kind not in KINDS:
        raise ValueError(f"unknown storage kind {kind!r}")
    if not _ID_RE.match(file_id):
        raise ValueError(f"invalid file id {file_id!r}")
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid file name {name!r}")
    return f"{kind}/{file_id}/{name}"


def check_key(key: str) -> tuple[Kind, str, str]:
    """The parts of a well-formed key; `FileNotFoundError` for any other string (traversal
    attempts, temp files, other shapes), so a bad key reads exactly like a missing file."""
    parts = key.split("/")
    try:
        if len(parts) != 3:
            raise ValueError(key)
        make_key(*parts)
    except ValueError:
        raise FileNotFoundError(key) from None
    return parts[0], parts[1], parts[2]  # type: ignore[return-value]


def key_from_path(path: str) -> str | None:
    """The key a `/files/{key}` URL path names, or None if it is no such path."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith(FILES_PREFIX + "/"):
        return None
    key = path[len(FILES_PREFIX) + 1 :]
    try:
        check_key(key)
    except FileNotFoundError:
        return None
    return key


def sanitize_content_type(content_type: str | None) -> str:
    """``type/subtype`` without parameters, or ``application/octet-stream`` if malformed."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return base if _CONTENT_TYPE_RE.match(base) else "application/octet-stream"


def sanitize_file_name(
    file_name: str | None, content_type: str = "application/octet-stream"
) -> str:
    """A safe base name: no directories, ASCII ``[A-Za-z0-9._-]``, no leading dot, <= 120 chars.

    When the name's extension does not match ``content_type``, the type's usual extension is
    appended, so the type guessed back from the name is the type the client declared.
    """
    name = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    name = re.sub(r"\.{2,}", ".", name).lstrip("._-")
    if not name:
        name = "file"
    guessed, _ = mimetypes.guess_type(name)
    if content_type != "application/octet-stream" and guessed != content_type:
        ext = mimetypes.guess_extension(content_type)
        if ext and not name.lower().endswith(ext):  # idempotent: a second pass adds nothing
            name = name + ext
    if len(name) > _MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: _MAX_NAME - len(ext) - 1] + "." + ext
        else:
            name = name[:_MAX_NAME]
    return name


def content_type_of(name: str) -> str:
    """The type a stored name stands for (names are sanitised to match their type on save)."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
