"""server/storage: `open_storage` by URL, key helpers, sanitising, and what LocalStorage adds to
the contract (tests/contract): its directory layout, symlinks, temp files, emptied directories."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from server.storage import (
    LocalStorage,
    check_storage_url,
    key_from_path,
    open_storage,
    sanitize_content_type,
    sanitize_file_name,
)
from server.storage.local import file_url_path


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files")


def test_file_urls(tmp_path: Path) -> None:
    assert file_url_path("file:///srv/ovi/files") == Path("/srv/ovi/files")
    assert file_url_path("file://localhost/srv/ovi") == Path("/srv/ovi")
    assert file_url_path("file:///srv/my%20ovi") == Path("/srv/my ovi")
    opened = open_storage((tmp_path / "x y").as_uri())
    assert isinstance(opened, LocalStorage) and opened.root == (tmp_path / "x y").resolve()
    assert {p.name for p in opened.root.iterdir()} == {"outputs", "uploads", "inputs"}
    for bad in ("file://nas/share", "file:relative/dir", "file:///x?y=1"):
        with pytest.raises(ValueError, match="file:///absolute/path"):
            open_storage(bad)


@pytest.mark.parametrize("url", ["/srv/files", "data/files", "gs://b", ""])
def test_unknown_schemes_name_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"supported schemes are file://.*s3://"):
        check_storage_url(url)
    with pytest.raises(ValueError, match=r"supported schemes are file://.*s3://"):
        open_storage(url)


def test_key_from_path() -> None:
    key = "outputs/AAAAAAAAAAAAAAAAAAAAAA/clip.mp4"
    assert key_from_path("/files/" + key) == key
    assert key_from_path("/files/" + key + "?x=1#y") == key
    for other in ("/other/" + key, "/files/outputs/../x/y.mp4", "/files/outputs/short/a.mp4", ""):
        assert key_from_path(other) is None


def test_layout_on_disk(storage: LocalStorage) -> None:
    stored = storage.save(b"abc", kind="uploads", content_type="image/png", file_name="cat.png")
    assert (storage.root / stored.key).read_bytes() == b"abc"
    assert stored.url == "/files/" + stored.key
    stored = storage.save(
        b"x", kind="outputs", content_type="video/mp4", file_name="C:\\x\\..\\ä b.mp4"
    )
    assert stored.file_name == "a_b.mp4"


@pytest.mark.parametrize(
    ("name", "ctype", "expected"),
    [
        ("photo", "image/png", "photo.png"),
        ("photo.jpg", "image/jpeg", "photo.jpg"),
        (".hidden", "application/octet-stream", "hidden"),
        ("", "application/octet-stream", "file"),
        (None, "image/png", "file.png"),
        ("a" * 300 + ".png", "image/png", "a" * 116 + ".png"),
    ],
)
def test_sanitize_file_name(name, ctype, expected):
    assert sanitize_file_name(name, ctype) == expected


def test_sanitize_content_type():
    assert sanitize_content_type("image/png; charset=binary") == "image/png"
    assert sanitize_content_type("text/html\r\nX-Evil: 1") == "application/octet-stream"
    assert sanitize_content_type(None) == "application/octet-stream"


def test_symlinks_out_of_root_are_not_found(storage: LocalStorage, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    d = storage.root / "uploads" / "abcdefghijklmnopqrst"
    d.mkdir(parents=True)
    (d / "link.txt").symlink_to(secret)
    with pytest.raises(FileNotFoundError):
        storage.stat("uploads/abcdefghijklmnopqrst/link.txt")


def test_sweep_removes_emptied_directories_and_stale_temp_files(storage: LocalStorage) -> None:
    old = storage.save(b"old", kind="outputs", content_type="video/mp4", file_name="o.mp4")
    new = storage.save(b"new", kind="uploads", content_type="image/png", file_name="n.png")
    old_path = storage.root / old.key
    temp = old_path.parent.parent / "abcdefghijklmnopqrstuv" / ".x.mp4.1234.partial"
    temp.parent.mkdir()
    temp.write_bytes(b"half")
    past = time.time() - 3600
    for path in (old_path, temp):
        os.utime(path, (past, past))
    assert storage.sweep(retention_s=600) == 1  # temp files are removed but not counted
    assert not old_path.parent.exists() and not temp.parent.exists()
    assert (storage.root / new.key).exists()
