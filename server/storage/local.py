"""`LocalStorage`: a directory (`file:///...`), the default backend.

Layout: ``root/{kind}/{id}/{name}`` for the key ``{kind}/{id}/{name}``. Writes go to a temp file
that is renamed into place, so readers (the API, on another process or machine sharing the
directory) never see a partial file. Only paths inside ``root`` are ever answered.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from server.storage.base import (
    FILES_PREFIX,
    KINDS,
    Storage,
    StoredFile,
    check_key,
    content_type_of,
)

_TMP_SUFFIX = ".partial"
CHUNK_BYTES = 64 * 1024


def file_url_path(url: str) -> Path:
    """The directory of a `file:///absolute/dir` URL (`file://localhost/...` too)."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query:
        raise ValueError(f"a storage directory URL is file:///absolute/path, not {url!r}")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"a storage directory URL is file:///absolute/path, not {url!r}")
    return Path(path)


class LocalStorage(Storage):
    """`server.storage.base.Storage` on a local (or shared, e.g. NFS) directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        for kind in KINDS:
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> LocalStorage:
        return cls(file_url_path(url))

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        """The existing regular file for `key` under root; FileNotFoundError otherwise."""
        kind, file_id, name = check_key(key)
        candidate = (self.root / kind / file_id / name).resolve()
        if not candidate.is_relative_to(self.root / kind) or not candidate.is_file():
            raise FileNotFoundError(key)
        return candidate

    def write(self, key: str, data: bytes) -> None:
        tmp, path = self._write_tmp(key, data)
        os.replace(tmp, path)

    def write_new(self, key: str, data: bytes) -> bool:
        tmp, path = self._write_tmp(key, data)
        try:
            os.link(tmp, path)  # fails if the name exists, atomically (also on a shared disk)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: check, then rename
            if path.exists():
                return False
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _write_tmp(self, key: str, data: bytes) -> tuple[Path, Path]:
        """`data` in a temporary file beside `key`'s path; (the temporary file, the path)."""
        path = self.root.joinpath(*check_key(key))
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        for attempt in range(2):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                break
            except FileNotFoundError:  # a concurrent sweep removed the emptied directory
                if attempt:
                    raise
        return tmp, path

    def stat(self, key: str) -> StoredFile:
        path = self._path(key)
        st = path.stat()
        return StoredFile(
            key=key,
            url=self.url(key),
            content_type=content_type_of(path.name),
            file_name=path.name,
            file_size=st.st_size,
            modified=st.st_mtime,
        )

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator
        return _chunks(f, start, end)

    def url(self, key: str) -> str:
        return f"{FILES_PREFIX}/{key}"

    def delete(self, key: str) -> bool:
        try:
            path = self._path(key)
        except FileNotFoundError:
            return False
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # only when empty
        except OSError:
            pass
        return True

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
                if directory.is_dir() and not directory.is_symlink():
                    deleted += _sweep_directory(directory, cutoff)
        return deleted


def _chunks(f: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = None if end is None else max(0, end - start)
        while left is None or left > 0:
            chunk = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def _sweep_directory(directory: Path, cutoff: float) -> int:
    deleted = 0
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
