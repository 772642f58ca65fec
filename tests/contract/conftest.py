"""The backends every contract test runs against, one fixture parameter each.

A new backend is one entry below: a function from a fresh temporary directory (and the session's
service fixtures, through `request`) to the URL that `open_store` / `open_storage` opens for it,
empty. Redis runs as a real `redis-server` on a free loopback port (one per session, a fresh key
prefix per test); S3 is moto's standalone server (the stand-in for cloud object storage); both
session fixtures live in `tests/conftest.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.jobs import JobStore, open_store
from server.storage import Storage, open_storage
from tools.services import RedisServer


def _redis_url(tmp: Path, request: pytest.FixtureRequest) -> str:
    server: RedisServer = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}:"


def _s3_url(tmp: Path, request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("moto_s3")
    return f"s3://contract-{uuid.uuid4().hex[:12]}/files"


JOB_STORES: dict[str, Callable[[Path, pytest.FixtureRequest], str]] = {
    "sqlite": lambda tmp, _: f"sqlite:///{tmp / 'jobs.sqlite3'}",
    "redis": _redis_url,
}
STORAGES: dict[str, Callable[[Path, pytest.FixtureRequest], str]] = {
    "file": lambda tmp, _: (tmp / "files").as_uri(),
    "s3": _s3_url,
}


@pytest.fixture(params=sorted(JOB_STORES))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return JOB_STORES[request.param](tmp_path, request)


@pytest.fixture()
def connect(store_url: str) -> Iterator[Callable[[], JobStore]]:
    """Opens more connections to the same store (another process's view); all closed after."""
    opened: list[JobStore] = []

    def open_one() -> JobStore:
        opened.append(open_store(store_url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture()
def store(connect: Callable[[], JobStore]) -> JobStore:
    return connect()


@pytest.fixture(params=sorted(STORAGES))
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return STORAGES[request.param](tmp_path, request)


@pytest.fixture()
def storage(storage_url: str) -> Iterator[Storage]:
    opened = open_storage(storage_url)
    yield opened
    opened.close()
