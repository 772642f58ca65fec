"""The `Storage` contract: what every backend (`conftest.STORAGES`) must do, through the protocol
only: keys, metadata, whole and ranged reads, URLs, replace, delete, retention, refusals."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.storage import Storage, key_from_path, new_file_id, read_all

DATA = bytes(range(256)) * 1000  # 256000 bytes, several read chunks


def test_save_stat_and_read(storage: Storage) -> None:
    stored = storage.save(DATA, kind="outputs", content_type="video/mp4", file_name="clip.mp4")
    kind, file_id, name = stored.key.split("/")
    assert (kind, name) == ("outputs", "clip.mp4") and len(file_id) >= 16
    assert (stored.content_type, stored.file_name, stored.file_size) == (
        "video/mp4",
        "clip.mp4",
        len(DATA),
    )
    assert stored.modified == pytest.approx(time.time(), abs=60)
    assert storage.stat(stored.key) == stored
    assert read_all(storage, stored.key) == DATA
    other = storage.save(DATA, kind="outputs", content_type="video/mp4", file_name="clip.mp4")
    assert other.key != stored.key  # a fresh random id each time


@pytest.mark.parametrize(
    ("start", "end"), [(0, 1), (100, 200), (65535, 65537), (255_000, None), (0, None), (10, 10**9)]
)
def test_range_reads(storage: Storage, start: int, end: int | None) -> None:
    key = storage.save(DATA, kind="outputs", content_type="video/mp4", file_name="a.mp4").key
    assert b"".join(storage.read(key, start, end)) == DATA[start:end]


def test_url_names_the_key(storage: Storage) -> None:
    stored = storage.save(b"x", kind="uploads", content_type="image/png", file_name="cat.png")
    assert stored.url == storage.url(stored.key)
    if stored.url.startswith("/"):  # served by the API: /files/{key}
        assert key_from_path(stored.url) == stored.key


def test_client_names_are_sanitised(storage: Storage) -> None:
    stored = storage.save(
        b"x", kind="uploads", content_type="image/jpeg", file_name="../../etc/passwd.jpg"
    )
    assert stored.file_name == "passwd.jpg" and stored.key.endswith("/passwd.jpg")
    assert storage.save(b"x", kind="uploads", content_type="image/png", file_name=None).file_name
    typed = storage.save(b"x", kind="uploads", content_type="image/png; x=1", file_name="photo")
    assert (typed.file_name, typed.content_type) == ("photo.png", "image/png")


def test_save_under_a_given_id_replaces(storage: Storage) -> None:
    file_id = new_file_id()
    first = storage.save(
        b"1", kind="uploads", content_type="image/png", file_name="a.png", file_id=file_id
    )
    assert f"/{file_id}/" in f"/{first.key}"
    second = storage.save(
        b"22", kind="uploads", content_type="image/png", file_name="a.png", file_id=file_id
    )
    assert second.key == first.key and read_all(storage, first.key) == b"22"
    for bad_id, kind in (("../x", "uploads"), (file_id, "cache")):
        with pytest.raises(ValueError):
            storage.save(
                b"1", kind=kind, content_type="image/png", file_name="a.png", file_id=bad_id
            )  # type: ignore[arg-type]


def test_exclusive_save_never_replaces(storage: Storage) -> None:
    """`exclusive` (single-use upload URLs): the first save wins, atomically, on every backend;
    a second one of the same key is `FileExistsError` and leaves the first bytes."""
    file_id = new_file_id()
    save = functools.partial(
        storage.save, kind="uploads", content_type="image/png", file_name="a.png", file_id=file_id
    )
    first = save(b"1", exclusive=True)
    with pytest.raises(FileExistsError):
        save(b"22", exclusive=True)
    assert read_all(storage, first.key) == b"1"
    with ThreadPoolExecutor(8) as pool:  # racing saves of a fresh key: exactly one stores
        race = functools.partial(save, exclusive=True, file_id=new_file_id())
        outcomes = list(pool.map(lambda data: _stored(race, data), [b"a", b"b"] * 4))
    assert outcomes.count(True) == 1, outcomes


def _stored(save: Callable[[bytes], object], data: bytes) -> bool:
    try:
        save(data)
    except FileExistsError:
        return False
    return True


@pytest.mark.parametrize(
    "key",
    [
        "uploads/../outputs/x/y.png",
        "uploads/%2e%2e/x.png",
        "uploads/abcdefghijklmnopq/../../../etc/passwd",
        "uploads/short/a.png",
        "cache/abcdefghijklmnopq/a.png",
        "uploads/abcdefghijklmnopq/.a.png.partial",
        "uploads/abcdefghijklmnopq",
        "uploads/AAAAAAAAAAAAAAAAAAAAAA/missing.png",
        "/etc/passwd",
        "",
    ],
)
def test_bad_or_missing_keys_are_not_found(storage: Storage, key: str) -> None:
    with pytest.raises(FileNotFoundError):
        storage.stat(key)
    with pytest.raises(FileNotFoundError):
        storage.read(key)
    assert storage.delete(key) is False


def test_delete(storage: Storage) -> None:
    stored = storage.save(b"x", kind="inputs", content_type="image/png", file_name="image")
    assert storage.delete(stored.key) is True
    with pytest.raises(FileNotFoundError):
        storage.stat(stored.key)
    assert storage.delete(stored.key) is False


def test_sweep_by_age(storage: Storage) -> None:
    old = storage.save(b"old", kind="outputs", content_type="video/mp4", file_name="o.mp4")
    new = storage.save(b"new", kind="uploads", content_type="image/png", file_name="n.png")
    assert storage.sweep(retention_s=600) == 0
    assert storage.sweep(retention_s=600, now=time.time() + 7200) == 2
    for key in (old.key, new.key):
        with pytest.raises(FileNotFoundError):
            storage.stat(key)


def test_readers_never_see_a_partial_file(storage: Storage) -> None:
    file_id = new_file_id()
    small, large = b"a" * 10, b"b" * 2_000_000
    key = storage.save(
        small, kind="outputs", content_type="video/mp4", file_name="v.mp4", file_id=file_id
    ).key
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = read_all(storage, key)
            seen.add(data[:1] * len(data))  # a mixed or cut file would not match either input

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for data in (large, small, large):
            storage.save(
                data, kind="outputs", content_type="video/mp4", file_name="v.mp4", file_id=file_id
            )
    finally:
        stop.set()
        thread.join(10)
    assert seen <= {small, large}
