"""Local file storage for generated outputs and client uploads.

Layout: ``root/{outputs,uploads}/<random id>/<sanitised file name>``. The id is 128 random bits,
so a stored file's URL is an unguessable capability; the client's own path never reaches the
disk. URL paths are ``{url_prefix}/{kind}/{id}/{name}`` (``/files/...`` by default); the files
route maps them back with :meth:`LocalStorage.resolve`, which only ever answers paths inside
``root``.
"""

from __future__ import annotations

import mimetypes
import os
import re
import secrets
import shutil
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["outputs", "uploads"]
KINDS: tuple[Kind, ...] = ("outputs", "uploads")

DEFAULT_URL_PREFIX = "/files"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*$")
_MAX_NAME = 120
_TMP_SUFFIX = ".partial"


@dataclass(frozen=True)
class StoredFile:
    path: Path
    url_path: str
    content_type: str
    file_name: str
    file_size: int


def new_file_id() -> str:
    """A fresh random id (22 URL-safe characters, 128 bits)."""
    return secrets.token_urlsafe(16)


def sanitize_content_type(content_type: str | None) -> str:
    """``type/subtype`` without parameters, or ``application/octet-stream`` if malformed."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return base if _CONTENT_TYPE_RE.match(base) else "application/octet-stream"


def sanitize_file_name(
    file_name: str | None, content_type: str = "application/octet-stream"
) -> str:
    """A safe base name: no directories, ASCII ``[A-Za-z0-9._-]``, no leading dot, <= 120 chars.

    When the name's extension does not match ``content_type``, the type's usual extension is
    appended, so the files route (which derives Content-Type from the name) serves the type the
    client declared.
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


class LocalStorage:
    """Bytes in, :class:`StoredFile` out; files live under ``root`` until :meth:`sweep`."""

    def __init__(self, root: Path, *, url_prefix: str = DEFAULT_URL_PREFIX) -> None:
        self.root = Path(root).resolve()
        self.url_prefix = "/" + url_prefix.strip("/")
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    def url_path_for(self, kind: Kind, file_id: str, file_name: str) -> str:
        return f"{self.url_prefix}/{kind}/{file_id}/{file_name}"

    def save(
        self,
        data: bytes,
        *,
        content_type: str,
        file_name: str | None,
        kind: Kind,
        file_id: str | None = None,
    ) -> StoredFile:
        """Store ``data`` atomically under a fresh id (or ``file_id``, for pre-signed uploads).

        ``file_name`` is sanitised here; pass the name a pre-signed URL was issued for to land on
        the same URL. Saving again under the same id and name replaces the file.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown storage kind {kind!r}")
        file_id = file_id or new_file_id()
        if not _ID_RE.match(file_id):
            raise ValueError(f"invalid file id {file_id!r}")
        content_type = sanitize_content_type(content_type)
        name = sanitize_file_name(file_name, content_type)
        directory = self.root / kind / file_id
        path = directory / name
        tmp = directory / f".{name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        for attempt in range(2):
            directory.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                break
            except FileNotFoundError:  # a concurrent sweep removed the emptied directory
                if attempt:
                    raise
        os.replace(tmp, path)
        return StoredFile(
            path=path,
            url_path=self.url_path_for(kind, file_id, name),
            content_type=content_type,
            file_name=name,
            file_size=len(data),
        )

    def resolve(self, url_path: str) -> Path:
        """Map ``/files/{kind}/{id}/{name}`` (prefix optional) to an existing file under root.

        Raises ``FileNotFoundError`` for anything else: other shapes, traversal attempts,
        symlinks leaving root, temp files, missing or expired files.
        """
        path = url_path.split("?", 1)[0].split("#", 1)[0]
        if path.startswith(self.url_prefix + "/"):
            path = path[len(self.url_prefix) :]
        parts = path.strip("/").split("/")
        if len(parts) != 3:
            raise FileNotFoundError(url_path)
        kind, file_id, name = parts
        if kind not in KINDS or not _ID_RE.match(file_id) or not _NAME_RE.match(name):
            raise FileNotFoundError(url_path)
        candidate = (self.root / kind / file_id / name).resolve()
        if not candidate.is_relative_to(self.root / kind) or not candidate.is_file():
            raise FileNotFoundError(url_path)
        return candidate

    def sweep(self, retention_s: float, *, now: float | None = None) -> int:
        """Delete files older than ``retention_s`` (by modification time); return how many.

        Emptied id directories are removed too. Safe to call while files are being written:
        in-progress temp files are only removed once they are older than the retention time.
        """
        cutoff = (time.time() if now is None else now) - retention_s
        deleted = 0
        for kind in KINDS:
            base = self.root / kind
            if not base.is_dir():
                continue
            for directory in base.iterdir():
                if not directory.is_dir() or directory.is_symlink():
                    continue
                emptied = False
                for entry in directory.iterdir():
                    try:
                        if entry.lstat().st_mtime >= cutoff:
                            continue
                        if entry.is_dir() and not entry.is_symlink():
                            shutil.rmtree(entry)
                        else:
                            entry.unlink()
                        emptied = True
                        if not entry.name.endswith(_TMP_SUFFIX):
                            deleted += 1
                    except FileNotFoundError:
                        continue
                try:
                    if emptied or directory.lstat().st_mtime < cutoff:
                        directory.rmdir()  # only succeeds when empty
                except OSError:
                    pass
        return deleted
