"""The backends every contract test runs against, one fixture parameter each.

A new backend is one entry below: a function from a fresh temporary directory to the URL that
`open_store` / `open_storage` opens for it, empty. (A Redis or S3 entry would return a URL with a
fresh key prefix or bucket path per test, and skip itself when its server is not configured.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.jobs import JobStore, open_store
from server.storage import Storage, open_storage

JOB_STORES: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'jobs.sqlite3'}",
}
STORAGES: dict[str, Callable[[Path], str]] = {
    "file": lambda tmp: (tmp / "files").as_uri(),
}


@pytest.fixture(params=sorted(JOB_STORES))
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return JOB_STORES[request.param](tmp_path)


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
    return STORAGES[request.param](tmp_path)


@pytest.fixture()
def storage(storage_url: str) -> Iterator[Storage]:
    opened = open_storage(storage_url)
    yield opened
    opened.close()
