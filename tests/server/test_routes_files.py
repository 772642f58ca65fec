"""GET /files/...: stored files from the storage with Range support, no key, safe headers, 404
otherwise; `byte_range` on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from _app import make_settings, running_app

from server.errors import RangeNotSatisfiableError
from server.routes.files import byte_range

DATA = bytes(range(256)) * 400  # 102400 bytes: more than one read chunk


def test_download_ranges_and_head(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path)) as (client, app):
        stored = app.state.storage.save(
            DATA, kind="outputs", content_type="video/mp4", file_name="a.mp4"
        )
        r = client.get(stored.url)
        assert r.status_code == 200 and r.content == DATA
        assert r.headers["content-type"] == "video/mp4"
        assert r.headers["content-length"] == str(len(DATA))
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["etag"] and r.headers["last-modified"]
        for header, lo, hi in (
            ("bytes=100-199", 100, 200),
            ("bytes=65530-70000", 65530, 70001),
            ("bytes=102000-", 102000, len(DATA)),
            ("bytes=-10", len(DATA) - 10, len(DATA)),
            ("bytes=0-999999", 0, len(DATA)),
        ):
            r = client.get(stored.url, headers={"Range": header})
            assert r.status_code == 206 and r.content == DATA[lo:hi], header
            assert r.headers["content-range"] == f"bytes {lo}-{hi - 1}/{len(DATA)}"
            assert r.headers["content-length"] == str(hi - lo)
        r = client.get(stored.url, headers={"Range": f"bytes={len(DATA)}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(DATA)}"
        for ignored in ("bytes=0-1,5-6", "bytes=x-y", "items=0-1", "bytes=9-3"):
            r = client.get(stored.url, headers={"Range": ignored})
            assert r.status_code == 200 and r.content == DATA, ignored
        etag = client.get(stored.url).headers["etag"]
        r = client.get(stored.url, headers={"Range": "bytes=0-0", "If-Range": etag})
        assert r.status_code == 206 and r.content == DATA[:1]
        r = client.get(stored.url, headers={"Range": "bytes=0-0", "If-Range": '"stale"'})
        assert r.status_code == 200 and r.content == DATA
        r = client.head(stored.url)
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(DATA)
        assert r.content == b""
        r = client.head(stored.url, headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and r.headers["content-length"] == "10"


def test_missing_and_private_files_are_404(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path)) as (client, app):
        stored = app.state.storage.save(
            b"x", kind="outputs", content_type="video/mp4", file_name="a.mp4"
        )
        job_input = app.state.storage.save(
            b"img", kind="inputs", content_type="image/png", file_name="image.png"
        )
        for missing in (
            stored.url + "x",
            "/files/outputs/AAAAAAAAAAAAAAAAAAAAAA/a.mp4",
            "/files/secrets/AAAAAAAAAAAAAAAAAAAAAA/a.mp4",
            "/files/outputs/..%2F..%2Fjobs.sqlite3/a.mp4",
            "/files/" + job_input.key,  # a job's input is never served
        ):
            r = client.get(missing)
            assert r.status_code == 404, missing
            assert r.json()["detail"] in ("File not found", "Not Found")  # no route: Starlette's


def test_byte_range() -> None:
    assert byte_range(None, 10) is None
    assert byte_range("bytes=2-4", 10) == (2, 5)
    assert byte_range("bytes = 2 - ", 10) == (2, 10)
    assert byte_range("bytes=-3", 10) == (7, 10)
    assert byte_range("bytes=-30", 10) == (0, 10)
    assert byte_range("bytes=-", 10) is None
    for unsatisfiable, size in (("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0)):
        with pytest.raises(RangeNotSatisfiableError):
            byte_range(unsatisfiable, size)
