"""Loading ``image_url`` inputs: data URIs, our own stored uploads, and http(s) behind an SSRF guard.

Every failure is an :class:`ImageInputError` whose message follows fal's
"Could not load image from url: <url>" plus the precise reason; the API answers it with a 422.

The guard (:class:`UrlPolicy`, also used for webhook URLs): only http and https; every address a
host resolves to must be public (loopback, private, link-local, carrier-grade NAT, multicast,
reserved, unspecified and cloud metadata addresses are refused, also when embedded in IPv6
forms) unless the host name or a network containing the address is allowlisted. The request then
goes to the checked address itself, with the original Host header and TLS SNI/certificate name, so
a second DNS answer cannot swap in another address. Redirects are followed by hand, each hop
checked again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from server.storage import (
    FILES_PREFIX,
    PUBLIC_KINDS,
    Storage,
    file_owner_tag,
    key_from_path,
    owner_tag,
    read_all,
)

DATA_URI_MAX_BYTES = 10 * 1024 * 1024  # fal's cap on data URIs, decoded
USER_AGENT = "ovi-server (image fetch)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6 IMDS
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = {301, 302, 303, 307, 308}


class ImageInputError(ValueError):
    """An ``image_url`` that could not be turned into an image (answered with a 422)."""

    loc: tuple[str, ...] = ("body", "image_url")
    type: str = "image_load_error"

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        self.msg = f"Could not load image from url: {display_url(url)} ({reason})"
        super().__init__(self.msg)

    def to_detail(self) -> dict[str, Any]:
        """One entry of a FastAPI-style 422 ``detail`` list."""
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class BlockedURLError(ValueError):
    """A URL the SSRF guard refuses; the message says why."""


def display_url(url: str, limit: int = 160) -> str:
    """A URL shortened for messages: data URIs keep their header, http URLs lose query and userinfo."""
    if url[:5].lower() == "data:":
        head = url.split(",", 1)[0]
        return (head[:64] + ",...") if "," in url else head[:64]
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url[:limit]
    if not parts.scheme or not parts.hostname:
        return url[:limit]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        shown += "?..."
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# --- the SSRF guard ---


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from, or None if it is a public unicast address."""
    if ip in _METADATA:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (reason := address_refusal(embedded)):
            return reason
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT address"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_private:
        return "private address"
    if ip.is_reserved:
        return "reserved address"
    if not ip.is_global:
        return "non-public address"
    return None


@dataclass(frozen=True)
class UrlPolicy:
    """Which outbound URLs are allowed: public addresses, plus allowlisted hosts and networks."""

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    schemes: frozenset[str] = field(default_factory=lambda: frozenset({"http", "https"}))

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> UrlPolicy:
        """Entries are host names (``minio.internal``), addresses or networks (``10.0.0.0/8``)."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_normalise_host(entry))
        return cls(allow_hosts=frozenset(hosts), allow_networks=tuple(networks))

    @classmethod
    def from_settings(cls, settings: Any) -> UrlPolicy:
        return cls.from_entries(getattr(settings, "url_allowlist", ()) or ())

    def host_allowed(self, host: str) -> bool:
        return _normalise_host(host) in self.allow_hosts

    def refusal(self, ip: IPAddress) -> str | None:
        if any(ip.version == net.version and ip in net for net in self.allow_networks):
            return None
        return address_refusal(ip)

    def check_url(self, url: httpx.URL) -> None:
        """Scheme and host checks that need no DNS."""
        if url.scheme not in self.schemes:
            raise BlockedURLError(f"unsupported URL scheme {url.scheme or '(none)'!r}")
        if not url.host:
            raise BlockedURLError("URL has no host")

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` and check every address; raise :class:`BlockedURLError` if any is refused.

        Refusing on any bad answer (not just filtering it out) keeps a name that mixes public and
        internal records from being used to reach the internal one.
        """
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as e:
                raise BlockedURLError(f"could not resolve host {host!r}: {e}") from None
            addresses = []
            for *_, sockaddr in infos:
                ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                raise BlockedURLError(f"host {host!r} has no addresses")
        if self.host_allowed(host):
            return addresses
        for ip in addresses:
            if reason := self.refusal(ip):
                shown = host if literal is not None else f"{host} ({ip})"
                raise BlockedURLError(
                    f"refused to connect to {reason} {shown}; allowlist it in the server settings (url_allowlist) to permit it"
                )
        return addresses


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def pinned_request(
    client: httpx.Client | httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    ip: IPAddress,
    **kwargs: Any,
) -> httpx.Request:
    """Build a request for ``url`` that connects to ``ip`` while keeping Host and TLS names."""
    headers = httpx.Headers(kwargs.pop("headers", None))
    headers["Host"] = url.netloc.decode("ascii")
    extensions = dict(kwargs.pop("extensions", None) or {})
    if url.scheme == "https":
        extensions["sni_hostname"] = url.host
    return client.build_request(
        method, url.copy_with(host=str(ip)), headers=headers, extensions=extensions, **kwargs
    )


# --- data URIs ---


def decode_data_uri(url: str, max_bytes: int = DATA_URI_MAX_BYTES) -> bytes:
    """Decode ``data:[<type>][;base64],<data>``; raise ``ValueError`` with a precise reason."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ValueError("malformed data URI: no ',' separating header and data")
    params = [p.strip().lower() for p in header.split(";")]
    if "base64" in params[1:]:
        compact = "".join(payload.split())
        if "%" in compact:
            compact = urllib.parse.unquote(compact)
        if len(compact) > (max_bytes // 3 + 1) * 4 + 4:
            raise ValueError(f"data URI larger than the {max_bytes} byte limit")
        compact = compact.replace("-", "+").replace("_", "/")
        compact += "=" * (-len(compact) % 4)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data URI is not valid base64") from None
    else:
        if len(payload) > 3 * max_bytes:
            raise ValueError(f"data URI larger than the {max_bytes} byte limit")
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ValueError(f"data URI larger than the {max_bytes} byte limit")
    if not data:
        raise ValueError("data URI is empty")
    return data


# --- http(s) ---


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 25 * 1024 * 1024
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    total_timeout_s: float = 60.0
    max_redirects: int = 5

    @classmethod
    def from_settings(cls, settings: Any) -> FetchLimits:
        defaults = cls()
        return cls(
            max_bytes=getattr(settings, "fetch_max_bytes", defaults.max_bytes),
            connect_timeout_s=getattr(
                settings, "fetch_connect_timeout_s", defaults.connect_timeout_s
            ),
            read_timeout_s=getattr(settings, "fetch_read_timeout_s", defaults.read_timeout_s),
            total_timeout_s=getattr(settings, "fetch_total_timeout_s", defaults.total_timeout_s),
            max_redirects=getattr(settings, "fetch_max_redirects", defaults.max_redirects),
        )


class _FetchFailed(Exception):
    pass


async def fetch_url_bytes(url: str, policy: UrlPolicy, limits: FetchLimits) -> bytes:
    """GET ``url`` behind the guard; raise ``ValueError`` with a precise reason on any failure."""
    try:
        return await asyncio.wait_for(_fetch(url, policy, limits), timeout=limits.total_timeout_s)
    except asyncio.TimeoutError:
        raise ValueError(f"download took longer than {limits.total_timeout_s:g} s") from None
    except _FetchFailed as e:
        raise ValueError(str(e)) from None


async def _fetch(url: str, policy: UrlPolicy, limits: FetchLimits) -> bytes:
    timeout = httpx.Timeout(
        connect=limits.connect_timeout_s,
        read=limits.read_timeout_s,
        write=limits.read_timeout_s,
        pool=limits.connect_timeout_s,
    )
    # trust_env=False: an environment proxy would connect for us and defeat address pinning.
    # create_ssl_context() still honours SSL_CERT_FILE, so a local CA can be trusted.
    async with httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        verify=httpx.create_ssl_context(),
        headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"},
    ) as client:
        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as e:
            raise _FetchFailed(f"invalid URL: {e}") from None
        for hop in range(limits.max_redirects + 1):
            try:
                policy.check_url(current)
                port = current.port or (443 if current.scheme == "https" else 80)
                loop = asyncio.get_running_loop()
                addresses = await loop.run_in_executor(None, policy.resolve, current.host, port)
            except BlockedURLError as e:
                where = "" if hop == 0 else f"redirect to {display_url(str(current))}: "
                raise _FetchFailed(where + str(e)) from None
            response_or_next = await _get_once(client, current, addresses, limits)
            if isinstance(response_or_next, bytes):
                return response_or_next
            current = response_or_next
        raise _FetchFailed(f"more than {limits.max_redirects} redirects")


async def _get_once(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress], limits: FetchLimits
) -> bytes | httpx.URL:
    """One hop: bytes on success, the next URL on a redirect."""
    last_error: Exception | None = None
    for ip in addresses:
        request = pinned_request(client, "GET", url, ip)
        try:
            response = await client.send(request, stream=True)
        except httpx.ConnectTimeout:
            last_error = _FetchFailed(f"connection to {url.host} timed out")
            continue
        except httpx.ConnectError as e:
            last_error = _FetchFailed(f"could not connect to {url.host}: {e or type(e).__name__}")
            continue
        except httpx.TimeoutException:
            raise _FetchFailed(f"{url.host} did not answer in time") from None
        except httpx.HTTPError as e:
            raise _FetchFailed(f"request failed: {e or type(e).__name__}") from None
        try:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise _FetchFailed(f"HTTP {response.status_code} redirect without Location")
                try:
                    return url.join(location)
                except (httpx.InvalidURL, ValueError) as e:
                    raise _FetchFailed(f"invalid redirect Location: {e}") from None
            if response.status_code != 200:
                raise _FetchFailed(f"HTTP {response.status_code} from {url.host}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise _FetchFailed(f"image larger than the {limits.max_bytes} byte limit")
            chunks: list[bytes] = []
            size = 0
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise _FetchFailed(f"image larger than the {limits.max_bytes} byte limit")
                    chunks.append(chunk)
            except httpx.TimeoutException:
                raise _FetchFailed(f"{url.host} stopped sending data (read timeout)") from None
            except httpx.HTTPError as e:
                raise _FetchFailed(f"download failed: {e or type(e).__name__}") from None
            return b"".join(chunks)
        finally:
            await response.aclose()
    raise last_error or _FetchFailed(f"host {url.host} has no addresses")


# --- the entry point ---


def _stored_upload(
    url: str, storage: Storage | None, settings: Any, owner: str | None = None
) -> bytes | None:
    """Bytes of one of our own stored files named by ``url``, without an HTTP round trip.

    A ``/files/{key}`` path whose file exists is ours: ids are 128-bit random, so a foreign server
    cannot collide by accident, and knowing an id already grants reading it over HTTP. A URL on
    our own public base that names a missing file fails here with a clear reason. With `owner`
    (when `files_require_key` is on) another key's file is refused as `/files` refuses it.
    """
    if storage is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    path = urllib.parse.unquote(parts.path)
    if not path.startswith(FILES_PREFIX + "/"):
        return None
    key = key_from_path(path)
    if (
        key is not None
        and owner is not None
        and file_owner_tag(key.split("/")[1]) != owner_tag(owner)
    ):
        raise ValueError("stored file not found (expired, never uploaded, or another key's)")
    try:
        if key is None or not key.startswith(PUBLIC_KINDS):
            raise FileNotFoundError(path)
        return read_all(storage, key)
    except FileNotFoundError:
        base = getattr(settings, "public_base_url", None)
        if base and parts.netloc and urllib.parse.urlsplit(str(base)).netloc == parts.netloc:
            raise ValueError("stored file not found (expired or never uploaded)") from None
        return None


async def load_image_bytes(
    url: str, settings: Any, *, storage: Storage | None = None, owner: str | None = None
) -> bytes:
    """The raw bytes behind ``url`` (no decoding); raise :class:`ImageInputError`."""
    if not isinstance(url, str) or not url.strip():
        raise ImageInputError(str(url), "empty URL")
    url = url.strip()
    try:
        if url[:5].lower() == "data:":
            return decode_data_uri(url)
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme not in ("http", "https"):
            raise ValueError(
                f"unsupported URL scheme {scheme or '(none)'!r}; use http, https or data"
            )
        local = _stored_upload(url, storage, settings, owner)
        if local is not None:
            return local
        return await fetch_url_bytes(
            url, UrlPolicy.from_settings(settings), FetchLimits.from_settings(settings)
        )
    except ValueError as e:
        raise ImageInputError(url, str(e)) from None


async def load_image_input(
    url: str,
    settings: Any,
    *,
    storage: Storage | None = None,
    slots: asyncio.Semaphore | None = None,
    owner: str | None = None,
) -> bytes:
    """Load ``image_url`` (data URI, our stored upload, or http/https) and check it is an image.

    The decode is bounded: the size is read from the header and refused over
    ``settings.image_max_pixels`` before any pixel is decoded, a larger-than-needed image is
    reduced to ``settings.image_pixel_budget`` pixels while decoding, and at most as many images
    decode at once as ``slots`` admits (the download is not held to it). Returns the encoded
    bytes, or the reduced image as a PNG when it was over the budget (`fit_image_bytes`), so
    the worker decodes at most the budget again.
    """
    data = await load_image_bytes(url, settings, storage=storage, owner=owner)
    from model.preprocess import ImageLoadError, fit_image_bytes  # lazy: keeps torch out

    fit = functools.partial(
        fit_image_bytes,
        data,
        max_pixels=getattr(settings, "image_max_pixels", 16_000_000),
        pixel_budget=getattr(settings, "image_pixel_budget", 4_194_304),
    )
    try:
        async with slots or contextlib.nullcontext():
            return await asyncio.get_running_loop().run_in_executor(None, fit)
    except ImageLoadError as e:
        raise ImageInputError(url, f"not a readable image: {e}") from None
