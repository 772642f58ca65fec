"""GET /files/...: stored files with Range support, no key, safe headers, 404 otherwise."""

from __future__ import annotations

from pathlib import Path

from _app import make_settings, running_app


def test_download_and_ranges(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path)) as (client, app):
        data = bytes(range(256)) * 40
        stored = app.state.storage.save(
            data, content_type="video/mp4", file_name="a.mp4", kind="outputs"
        )
        r = client.get(stored.url_path)
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-type"] == "video/mp4"
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["x-content-type-options"] == "nosniff"
        r = client.get(stored.url_path, headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
        r = client.head(stored.url_path)
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(data)
        for missing in (
            stored.url_path + "x",
            "/files/outputs/AAAAAAAAAAAAAAAAAAAAAA/a.mp4",
            "/files/secrets/AAAAAAAAAAAAAAAAAAAAAA/a.mp4",
            "/files/outputs/..%2F..%2Fjobs.sqlite3/a.mp4",
        ):
            assert client.get(missing).status_code == 404, missing
