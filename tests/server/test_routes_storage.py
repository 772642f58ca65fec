"""server/routes/storage.py and routes/webhooks.py through the real app (no workers, no model)."""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse

import pytest
from fastapi.testclient import TestClient

from server.main import create_app
from server.routes.storage import UploadSigner
from server.settings import ServerSettings
from server.webhooks import public_jwk

KEY = "test-key"
AUTH = {"Authorization": f"Key {KEY}"}


@pytest.fixture
def settings(tmp_path) -> ServerSettings:
    return ServerSettings(
        data_dir=tmp_path / "data", workers=0, api_keys=[KEY], upload_max_bytes=1000
    )


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings), base_url="http://testserver") as c:
        yield c


def test_initiate_put_then_read_back(client):
    r = client.post(
        "/storage/upload/initiate?storage_type=fal-cdn-v3",
        json={"file_name": "../../cat photo.png", "content_type": "image/png"},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    upload_url, file_url = r.json()["upload_url"], r.json()["file_url"]
    assert upload_url.startswith("http://testserver/storage/upload/put/")
    assert file_url.startswith("http://testserver/files/uploads/") and file_url.endswith(
        "/cat_photo.png"
    )
    assert client.get(file_url).status_code == 404  # nothing until the PUT
    put = client.put(
        upload_url, content=b"PNGDATA", headers={"Content-Type": "image/png"}
    )  # no key
    assert put.status_code == 200, put.text
    got = client.get(file_url)
    assert got.status_code == 200 and got.content == b"PNGDATA"
    assert got.headers["content-type"] == "image/png"


def test_put_needs_a_valid_unexpired_token(client, settings):
    r = client.post(
        "/storage/upload/initiate",
        json={"file_name": "a.png", "content_type": "image/png"},
        headers=AUTH,
    )
    upload_url = r.json()["upload_url"]
    parts = urllib.parse.urlsplit(upload_url)
    token = urllib.parse.parse_qs(parts.query)["token"][0]
    assert client.put(parts.path + "?token=" + token[:-2] + "xx", content=b"x").status_code == 403
    assert client.put(parts.path + "?token=garbage", content=b"x").status_code == 403
    other_id = parts.path.rsplit("/", 1)[0] + "/AAAAAAAAAAAAAAAAAAAAAA"
    assert client.put(other_id + "?token=" + token, content=b"x").status_code == 403
    signer = UploadSigner.from_data_dir(settings.data_dir)
    expired = signer.sign(
        {
            "purpose": "put",
            "id": parts.path.rsplit("/", 1)[1],
            "name": "a.png",
            "ct": "image/png",
            "exp": time.time() - 1,
        }
    )
    r = client.put(parts.path + "?token=" + expired, content=b"x")
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    cdn = signer.sign({"purpose": "cdn", "sub": "x", "exp": time.time() + 60})  # wrong purpose
    assert client.put(parts.path + "?token=" + cdn, content=b"x").status_code == 403


def test_non_ascii_tokens_are_403_not_500(client):
    # hmac.compare_digest raises TypeError on non-ASCII str: it must never see one
    assert (
        client.put("/storage/upload/put/abc?token=ovi1.x.%C3%A9", content=b"x").status_code == 403
    )
    bearer = {"Authorization": "Bearer ovi1.x.\u00e9".encode("latin-1")}
    assert client.post("/files/upload", content=b"x", headers=bearer).status_code == 403


def test_size_cap_and_multipart(client):
    r = client.post("/storage/upload/initiate", json={"file_name": "a.bin"}, headers=AUTH)
    big = client.put(r.json()["upload_url"], content=b"\0" * 1001)
    assert big.status_code == 413 and big.json()["error_type"] == "file_too_large"
    assert (
        client.post("/storage/upload/initiate-multipart", json={}, headers=AUTH).status_code == 413
    )
    token = client.post("/storage/auth/token", json={}, headers=AUTH).json()["token"]
    r = client.post(
        "/files/upload", content=b"\0" * 1001, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 413


def test_api_key_required_except_on_put(client):
    assert client.post("/storage/upload/initiate", json={}).status_code == 401
    assert client.post("/storage/auth/token", json={}).status_code == 401
    assert client.post("/files/upload", content=b"x").status_code == 401
    bad = client.post(
        "/files/upload", content=b"x", headers={"Authorization": "Bearer ovi1.e30.AAAA"}
    )
    assert bad.status_code == 403


def test_cdn_token_flow(client):
    r = client.post("/storage/auth/token?storage_type=fal-cdn-v3", json={}, headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer" and body["base_url"] == "http://testserver"
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert expires.tzinfo is not None and expires > dt.datetime.now(dt.timezone.utc)
    up = client.post(
        body["base_url"] + "/files/upload",
        content=b"GIF89a",
        headers={
            "Authorization": f"{body['token_type']} {body['token']}",
            "Content-Type": "image/gif",
            "X-Fal-File-Name": "anim.gif",
        },
    )
    assert up.status_code == 200, up.text
    url = up.json()["access_url"]
    assert url.startswith("http://testserver/files/uploads/") and url.endswith("/anim.gif")
    assert client.get(url).content == b"GIF89a"
    # an API key works on the CDN route too
    assert client.post("/files/upload", content=b"x", headers=AUTH).status_code == 200


def test_public_base_url_is_honoured(tmp_path):
    settings = ServerSettings(
        data_dir=tmp_path, workers=0, public_base_url="https://ovi.example.com/"
    )
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/storage/upload/initiate", json={"file_name": "a.png", "content_type": "image/png"}
        )
        assert r.json()["upload_url"].startswith("https://ovi.example.com/storage/upload/put/")
        assert (
            c.post("/storage/auth/token", json={}).json()["base_url"] == "https://ovi.example.com"
        )


def test_jwks_route(client):
    r = client.get("/.well-known/jwks.json")  # no API key needed
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert keys == [public_jwk(client.app.state.webhooks.public_key)]
