"""What only the S3 backend has (the shared behaviour is `tests/contract`): its URL, result URLs
proxied through the API with Range from any replica, and pre-signed URLs with `s3_presign`.
moto's standalone server stands in for S3 (an external boundary)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from _app import make_settings
from fastapi.testclient import TestClient

from server.main import create_app
from server.storage import check_storage_url, open_storage, read_all
from server.storage.s3 import parse_s3_url


def test_urls() -> None:
    assert parse_s3_url("s3://b/p/q") == ("b", "p/q", False, 7 * 24 * 3600)
    assert parse_s3_url("s3://b?presign=1&presign_ttl=60") == ("b", "", True, 60)
    for bad in ("s3://", "s3://b?x=1", "s3://b?presign=1&presign_ttl=0"):
        with pytest.raises(ValueError):
            check_storage_url(bad)
    settings = make_settings(Path("d"), storage="s3://b/p", s3_presign=True)
    assert settings.storage_url == "s3://b/p?presign=1"


def test_files_route_serves_s3_objects_with_range_from_every_replica(
    moto_s3, tmp_path: Path
) -> None:
    url = f"s3://replicas-{uuid.uuid4().hex[:8]}/out"
    data = bytes(range(256)) * 40
    writer = open_storage(url)  # a worker on another machine
    stored = writer.save(data, kind="outputs", content_type="video/mp4", file_name="clip.mp4")
    writer.close()
    for replica in ("a", "b"):
        settings = make_settings(tmp_path / replica, storage=url)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            whole = client.get(stored.url)
            assert whole.status_code == 200 and whole.content == data
            part = client.get(stored.url, headers={"Range": "bytes=100-199"})
            assert part.status_code == 206 and part.content == data[100:200]
            assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
            assert client.get(stored.url.replace("clip", "nope")).status_code == 404


def test_presigned_urls_point_at_the_store(moto_s3) -> None:
    storage = open_storage(f"s3://presign-{uuid.uuid4().hex[:8]}/p?presign=1&presign_ttl=600")
    try:
        stored = storage.save(b"abc", kind="outputs", content_type="video/mp4", file_name="a.mp4")
        assert stored.url.startswith(moto_s3.endpoint) and "Signature" in stored.url
        assert httpx.get(stored.url, timeout=10).content == b"abc" == read_all(storage, stored.key)
    finally:
        storage.close()
