"""server/fetch.py: data URIs, stored uploads, http(s) behind the SSRF guard, image decoding."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket
import urllib.parse

import pytest
from _loopback_http import LoopbackServer, Reply
from PIL import Image

from server.fetch import (
    DATA_URI_MAX_BYTES,
    ImageInputError,
    UrlPolicy,
    address_refusal,
    display_url,
    load_image_input,
)
from server.settings import ServerSettings
from server.storage import LocalStorage


def _png(size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def _settings(tmp_path, allow: list[str] | None = None, **kw) -> ServerSettings:
    return ServerSettings(data_dir=tmp_path, url_allowlist=allow or [], **kw)


def _load(url: str, settings: ServerSettings, **kw) -> bytes:
    return asyncio.run(load_image_input(url, settings, **kw))


def _fails(url: str, settings: ServerSettings, match: str, **kw) -> ImageInputError:
    with pytest.raises(ImageInputError, match=match) as info:
        _load(url, settings, **kw)
    assert str(info.value).startswith("Could not load image from url: ")
    return info.value


# --- data URIs ---


def test_data_uri_base64(tmp_path):
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert _load(uri, _settings(tmp_path)) == PNG


def test_data_uri_percent_encoded_and_unpadded(tmp_path):
    uri = "data:image/png," + urllib.parse.quote_from_bytes(PNG)
    assert _load(uri, _settings(tmp_path)) == PNG
    unpadded = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    assert _load("data:image/png;base64," + unpadded, _settings(tmp_path)) == PNG


def test_data_uri_over_10_mib(tmp_path):
    big = base64.b64encode(b"\0" * (DATA_URI_MAX_BYTES + 1)).decode()
    err = _fails("data:image/png;base64," + big, _settings(tmp_path), "10485760 byte limit")
    assert "data:image/png;base64,..." in err.msg  # the message does not echo megabytes


def test_data_uri_bad_base64(tmp_path):
    _fails("data:image/png;base64,@@@not*base64", _settings(tmp_path), "not valid base64")
    _fails("data:image/png;base64", _settings(tmp_path), "malformed data URI")


def test_corrupt_image(tmp_path):
    uri = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n garbage").decode()
    _fails(uri, _settings(tmp_path), "not a readable image")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x", "/etc/passwd", ""]
)
def test_other_schemes_refused(tmp_path, url):
    _fails(url, _settings(tmp_path), "unsupported URL scheme|empty URL")


# --- http(s) ---


def test_http_ok_with_allowlist(tmp_path):
    with LoopbackServer() as server:
        server.routes["/cat.png"] = lambda req: Reply(200, PNG, {"Content-Type": "image/png"})
        assert _load(server.base + "/cat.png?sig=secret", _settings(tmp_path, ["127.0.0.1"])) == PNG
        got = server.received[0]
    assert got.headers["Host"] == f"127.0.0.1:{server.port}"


def test_host_name_is_kept_while_connecting_to_the_checked_address(tmp_path):
    # "localhost" resolves to a loopback address: allowlisting the name permits it, and the
    # request still says Host: localhost although it goes to the resolved IP.
    with LoopbackServer() as server:
        server.routes["/a.png"] = lambda req: Reply(200, PNG)
        url = f"http://localhost:{server.port}/a.png"
        assert _load(url, _settings(tmp_path, ["localhost"])) == PNG
        assert server.received[0].headers["Host"] == f"localhost:{server.port}"


def test_loopback_refused_without_allowlist(tmp_path):
    with LoopbackServer() as server:
        server.routes["/cat.png"] = lambda req: Reply(200, PNG)
        err = _fails(server.base + "/cat.png?token=abc", _settings(tmp_path), "loopback address")
        _fails(f"http://localhost:{server.port}/cat.png", _settings(tmp_path), "loopback address")
        assert server.received == []  # refused before connecting
    assert "token=abc" not in err.msg and "?..." in err.msg


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.1.2.3/a.png", "private address"),
        ("http://192.168.0.1/a.png", "private address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata address"),
        ("http://[::ffff:127.0.0.1]/a.png", "loopback address"),
        ("http://[::1]/a.png", "loopback address"),
        ("http://100.64.1.1/a.png", "carrier-grade NAT address"),
        ("http://0.0.0.0/a.png", "unspecified address"),
        ("http://224.0.0.1/a.png", "multicast address"),
        ("http://[fe80::1]/a.png", "link-local address"),
        ("http://2130706433/a.png", "loopback address"),  # 127.0.0.1 as one integer
    ],
)
def test_internal_addresses_refused(tmp_path, url, reason):
    _fails(url, _settings(tmp_path), reason)


def test_allowlisted_network(tmp_path):
    with LoopbackServer() as server:
        server.routes["/a.png"] = lambda req: Reply(200, PNG)
        assert _load(server.base + "/a.png", _settings(tmp_path, ["127.0.0.0/8"])) == PNG


def test_redirect_is_followed_and_rechecked(tmp_path):
    with LoopbackServer() as server:
        server.routes["/start"] = lambda req: Reply(302, headers={"Location": "/final.png"})
        server.routes["/final.png"] = lambda req: Reply(200, PNG)
        server.routes["/to-metadata"] = lambda req: Reply(
            301, headers={"Location": "http://169.254.169.254/latest/meta-data/"}
        )
        server.routes["/to-private"] = lambda req: Reply(
            307, headers={"Location": "http://10.0.0.7/x"}
        )
        server.routes["/loop"] = lambda req: Reply(302, headers={"Location": "/loop"})
        settings = _settings(tmp_path, ["127.0.0.1"], fetch_max_redirects=3)
        assert _load(server.base + "/start", settings) == PNG
        _fails(
            server.base + "/to-metadata",
            settings,
            r"redirect to http://169\.254\.169\.254.*cloud metadata",
        )
        _fails(server.base + "/to-private", settings, "redirect to .*private address")
        _fails(server.base + "/loop", settings, "more than 3 redirects")
        assert sum(r.path == "/loop" for r in server.received) == 4


def test_http_errors(tmp_path):
    with LoopbackServer() as server:
        server.routes["/corrupt.png"] = lambda req: Reply(200, b"<html>not an image</html>")
        settings = _settings(tmp_path, ["127.0.0.1"])
        _fails(server.base + "/missing.png", settings, "HTTP 404")
        _fails(server.base + "/corrupt.png", settings, "not a readable image")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    _fails(
        f"http://127.0.0.1:{port}/a.png", _settings(tmp_path, ["127.0.0.1"]), "could not connect"
    )
    _fails("http://no-such-host.invalid/a.png", _settings(tmp_path), "could not resolve host")


def test_size_cap(tmp_path):
    with LoopbackServer() as server:
        server.routes["/big.png"] = lambda req: Reply(200, PNG + b"\0" * 5000)
        settings = _settings(tmp_path, ["127.0.0.1"], fetch_max_bytes=1000)
        _fails(server.base + "/big.png", settings, "larger than the 1000 byte limit")


def test_timeouts(tmp_path):
    with LoopbackServer() as server:
        server.routes["/slow.png"] = lambda req: Reply(200, PNG, delay_s=2.0)
        read = _settings(tmp_path, ["127.0.0.1"], fetch_read_timeout_s=0.3)
        _fails(server.base + "/slow.png", read, "read timeout")
        total = _settings(tmp_path, ["127.0.0.1"], fetch_total_timeout_s=0.3)
        _fails(server.base + "/slow.png", total, "longer than 0.3 s")


# --- our own stored uploads ---


def test_stored_upload_without_http(tmp_path):
    storage = LocalStorage(tmp_path / "files")
    stored = storage.save(PNG, content_type="image/png", file_name="u.png", kind="uploads")
    settings = _settings(tmp_path, public_base_url="https://ovi.example.com")
    # the host does not even resolve: no HTTP round trip happens
    url = "https://ovi.example.com" + stored.url
    assert _load(url, settings, storage=storage) == PNG
    assert _load("http://127.0.0.1:9" + stored.url, settings, storage=storage) == PNG
    job_input = storage.save(PNG, content_type="image/png", file_name="i.png", kind="inputs")
    _fails(
        "https://ovi.example.com" + storage.url(job_input.key),
        settings,
        "not found",
        storage=storage,
    )
    missing = "https://ovi.example.com/files/uploads/AAAAAAAAAAAAAAAAAAAAAA/gone.png"
    _fails(missing, settings, "stored file not found", storage=storage)
    escape = "https://ovi.example.com/files/uploads/%2e%2e/%2e%2e/etc/passwd"
    _fails(escape, _settings(tmp_path), "could not resolve host|not found", storage=storage)


# --- the guard itself ---


@pytest.mark.parametrize(
    ("ip", "refused"),
    [
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("127.0.0.5", "loopback address"),
        ("172.16.0.1", "private address"),
        ("100.100.100.200", "cloud metadata address"),
        ("64:ff9b::a00:1", "private address"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::1", "loopback address"),  # 6to4 of 127.0.0.1
        ("240.0.0.1", "private address"),  # Python's tables list 240/4 as private too
        ("255.255.255.255", "private address"),
        ("ff02::1", "multicast address"),
    ],
)
def test_address_refusal(ip, refused):
    assert address_refusal(ipaddress.ip_address(ip)) == refused


def test_policy_entries():
    policy = UrlPolicy.from_entries(["127.0.0.1", "10.0.0.0/8", "MinIO.lan.", "[::1]", " "])
    assert policy.refusal(ipaddress.ip_address("10.9.8.7")) is None
    assert policy.refusal(ipaddress.ip_address("::1")) is None
    assert policy.refusal(ipaddress.ip_address("192.168.1.1")) == "private address"
    assert policy.host_allowed("minio.lan")


def test_display_url():
    assert (
        display_url("https://user:pw@h.example/a/b.png?X-Sig=1") == "https://h.example/a/b.png?..."
    )
    assert display_url("data:image/png;base64," + "A" * 1000) == "data:image/png;base64,..."
