"""server/jobs/__init__.py: `open_store` by URL, the only way to a job store."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.jobs import SqliteJobStore, check_store_url, open_store, sqlite_path


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sqlite_path("sqlite:///data/jobs.sqlite3") == Path("data/jobs.sqlite3")  # relative
    assert sqlite_path("sqlite:////srv/ovi/jobs.sqlite3") == Path("/srv/ovi/jobs.sqlite3")
    assert sqlite_path("sqlite:////srv/my%20ovi/j.db") == Path("/srv/my ovi/j.db")
    store = open_store(f"sqlite:///{tmp_path / 'a' / 'jobs.sqlite3'}")
    assert isinstance(store, SqliteJobStore) and store.path == tmp_path / "a" / "jobs.sqlite3"
    store.close()
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel/jobs.sqlite3")
    assert (tmp_path / "rel" / "jobs.sqlite3").exists()
    relative.close()


@pytest.mark.parametrize(
    "url", ["sqlite://host/jobs.db", "sqlite:///", "sqlite:///dir/", "sqlite:///j.db?mode=ro"]
)
def test_malformed_sqlite_urls(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        open_store(url)


@pytest.mark.parametrize("url", ["postgres://x/y", "data/jobs.sqlite3", "/abs/jobs.sqlite3", ""])
def test_unknown_schemes_name_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"supported schemes are sqlite://.*redis://"):
        check_store_url(url)
    with pytest.raises(ValueError, match=r"supported schemes are sqlite://.*redis://"):
        open_store(url)
