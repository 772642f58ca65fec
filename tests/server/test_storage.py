"""server/storage.py: layout, sanitising, traversal-safe resolve, retention sweep."""

from __future__ import annotations

import os
import time

import pytest

from server.storage import LocalStorage, new_file_id, sanitize_content_type, sanitize_file_name


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "files")


def test_save_layout_and_resolve(storage):
    stored = storage.save(b"abc", content_type="image/png", file_name="cat.png", kind="uploads")
    assert stored.file_size == 3 and stored.file_name == "cat.png"
    assert stored.content_type == "image/png"
    kind, file_id, name = stored.url_path.removeprefix("/files/").split("/")
    assert (kind, name) == ("uploads", "cat.png") and len(file_id) >= 16
    assert stored.path == storage.root / "uploads" / file_id / "cat.png"
    assert storage.resolve(stored.url_path).read_bytes() == b"abc"
    assert storage.resolve(stored.url_path.removeprefix("/files")) == stored.path
    again = storage.save(b"abc", content_type="image/png", file_name="cat.png", kind="uploads")
    assert again.url_path != stored.url_path  # fresh random id each time


def test_client_path_never_reaches_disk(storage):
    stored = storage.save(
        b"x", content_type="image/jpeg", file_name="../../etc/passwd.jpg", kind="uploads"
    )
    assert stored.file_name == "passwd.jpg"
    assert stored.path.parent.parent == storage.root / "uploads"
    stored = storage.save(
        b"x", content_type="video/mp4", file_name="C:\\x\\..\\ä b.mp4", kind="outputs"
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


def test_pre_signed_id(storage):
    file_id = new_file_id()
    stored = storage.save(
        b"1", content_type="image/png", file_name="a.png", kind="uploads", file_id=file_id
    )
    assert f"/{file_id}/" in stored.url_path
    with pytest.raises(ValueError):
        storage.save(
            b"1", content_type="image/png", file_name="a.png", kind="uploads", file_id="../x"
        )
    with pytest.raises(ValueError):
        storage.save(b"1", content_type="image/png", file_name="a.png", kind="cache")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url_path",
    [
        "/files/uploads/../outputs/x/y.png",
        "/files/uploads/%2e%2e/x.png",
        "/files/uploads/abcdefghijklmnopq/../../../etc/passwd",
        "/files/uploads/short/a.png",
        "/files/cache/abcdefghijklmnopq/a.png",
        "/files/uploads/abcdefghijklmnopq/.a.png.partial",
        "/files/uploads/abcdefghijklmnopq",
        "/etc/passwd",
        "",
    ],
)
def test_resolve_refuses(storage, url_path):
    with pytest.raises(FileNotFoundError):
        storage.resolve(url_path)


def test_resolve_refuses_symlink_out(storage, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    d = storage.root / "uploads" / "abcdefghijklmnopqrst"
    d.mkdir(parents=True)
    (d / "link.txt").symlink_to(secret)
    with pytest.raises(FileNotFoundError):
        storage.resolve("/files/uploads/abcdefghijklmnopqrst/link.txt")


def test_sweep(storage):
    old = storage.save(b"old", content_type="video/mp4", file_name="o.mp4", kind="outputs")
    new = storage.save(b"new", content_type="image/png", file_name="n.png", kind="uploads")
    past = time.time() - 3600
    os.utime(old.path, (past, past))
    assert storage.sweep(retention_s=600) == 1
    assert not old.path.exists() and not old.path.parent.exists()
    assert new.path.exists()
    with pytest.raises(FileNotFoundError):
        storage.resolve(old.url_path)
    assert storage.sweep(retention_s=600) == 0
    assert storage.sweep(retention_s=600, now=time.time() + 7200) == 1
    assert not new.path.exists()
