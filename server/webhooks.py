"""Webhook delivery (``?fal_webhook=URL``): signed, retried with backoff, durable, off the worker.

Body (JSON, POST): ``{request_id, gateway_request_id, status: "OK"|"ERROR", payload, error,
payload_error}``, as fal sends it. ``payload`` is the output on success and the error body
(``{"detail": ..., "error_type": ...}``) on failure; when the payload cannot be serialised it is
null and ``payload_error`` says why.

Signature (fal's scheme, with this server's key): headers

    X-Fal-Webhook-Request-Id   the request id
    X-Fal-Webhook-User-Id      who submitted it (the API key's id; "local" without keys)
    X-Fal-Webhook-Timestamp    unix seconds when this attempt was signed
    X-Fal-Webhook-Signature    hex Ed25519 signature over the UTF-8 bytes of
                               request_id + "\\n" + user_id + "\\n" + timestamp + "\\n"
                               + sha256_hex(raw body)

The Ed25519 key is created once in the data dir (``webhook-ed25519.pem``) and its public half is
published as a JWKS at ``GET /.well-known/jwks.json`` (the path fal uses). Receivers verify with
:func:`verify_webhook` or any Ed25519 library, and should reject timestamps older than ~5 minutes.

Delivery: :meth:`WebhookDispatcher.enqueue` writes the delivery to the job store's outbox (the
same `JobStore` as the jobs, so every backend carries it) and returns at once; a background
thread posts due deliveries from a few worker threads. A non-2xx answer, a timeout or a refused
address is retried after ``initial_delay * 2**(n-1)`` (capped), ``max_attempts`` tries in all;
the default 10 tries with a 15 s start span about two hours, like fal. Pending deliveries survive
a restart. Webhook URLs pass the same SSRF guard as ``image_url`` fetches
(:class:`server.fetch.UrlPolicy`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from server.fetch import BlockedURLError, UrlPolicy, pinned_request
from server.jobs.base import Delivery, JobStore

log = logging.getLogger(__name__)

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"
JWKS_PATH = "/.well-known/jwks.json"
KEY_FILE_NAME = "webhook-ed25519.pem"
DEFAULT_TOLERANCE_S = 300.0
USER_AGENT = "ovi-server (webhook)"

Status = Literal["OK", "ERROR"]


class WebhookVerificationError(ValueError):
    """A webhook whose signature, headers or timestamp do not check out."""


# --- signing and verification ---


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes the signature covers."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def sign_webhook(
    key: Ed25519PrivateKey,
    *,
    request_id: str,
    user_id: str,
    body: bytes,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The four signature headers for one delivery attempt."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(signed_message(request_id, user_id, ts, body))
    return {
        HEADER_REQUEST_ID: request_id,
        HEADER_USER_ID: user_id,
        HEADER_TIMESTAMP: ts,
        HEADER_SIGNATURE: signature.hex(),
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """An RFC 8037 OKP JWK; ``kid`` is the RFC 7638 thumbprint."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = _b64url(raw)
    thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    kid = _b64url(hashlib.sha256(thumbprint.encode()).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}


def jwks(public_key: Ed25519PublicKey) -> dict[str, list[dict[str, str]]]:
    return {"keys": [public_jwk(public_key)]}


PublicKeys = Ed25519PublicKey | bytes | Mapping[str, Any] | Iterable[Any]


def _public_keys(keys: PublicKeys) -> list[Ed25519PublicKey]:
    """Accept a key object, 32 raw bytes, a PEM, a JWK, a JWKS, or a list of those."""
    if isinstance(keys, Ed25519PublicKey):
        return [keys]
    if isinstance(keys, bytes | bytearray):
        data = bytes(keys)
        if data.startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_public_key(data)
            if not isinstance(loaded, Ed25519PublicKey):
                raise ValueError("PEM is not an Ed25519 public key")
            return [loaded]
        return [Ed25519PublicKey.from_public_bytes(data)]
    if isinstance(keys, Mapping):
        if "keys" in keys:
            return _public_keys(keys["keys"])
        if keys.get("kty") == "OKP" and keys.get("crv") == "Ed25519" and "x" in keys:
            return [Ed25519PublicKey.from_public_bytes(_b64url_decode(str(keys["x"])))]
        return []
    return [k for item in keys for k in _public_keys(item)]


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    public_key: PublicKeys,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a received webhook; raise :class:`WebhookVerificationError` unless it is authentic.

    ``headers`` is any mapping (case-insensitive lookup is done here), ``body`` the raw request
    bytes exactly as received, ``public_key`` our key in any form :func:`_public_keys` accepts
    (the JWKS from ``/.well-known/jwks.json`` works as is). Timestamps further than
    ``tolerance_s`` from ``now`` are rejected to stop replays.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        request_id = lower[HEADER_REQUEST_ID.lower()]
        user_id = lower[HEADER_USER_ID.lower()]
        timestamp = lower[HEADER_TIMESTAMP.lower()]
        signature_hex = lower[HEADER_SIGNATURE.lower()]
    except KeyError as e:
        raise WebhookVerificationError(f"missing header {e.args[0]}") from None
    try:
        ts = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise WebhookVerificationError("timestamp outside the allowed window")
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise WebhookVerificationError("signature is not hex") from None
    message = signed_message(request_id, user_id, timestamp, body)
    candidates = _public_keys(public_key)
    if not candidates:
        raise WebhookVerificationError("no Ed25519 public key given")
    for key in candidates:
        try:
            key.verify(signature, message)
            return
        except InvalidSignature:
            continue
    raise WebhookVerificationError("signature does not match")


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The server's Ed25519 webhook key, created (0600) on first use."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race; load theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            return key
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


# --- body ---


def build_body(
    *,
    request_id: str,
    gateway_request_id: str | None,
    status: Status,
    payload: Any,
    error: str | None,
) -> bytes:
    """fal's webhook body; an unserialisable payload becomes null plus ``payload_error``."""
    doc: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": gateway_request_id or request_id,
        "status": status,
        "payload": payload,
        "error": error,
        "payload_error": None,
    }
    try:
        return json.dumps(doc, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        doc["payload"] = None
        doc["payload_error"] = f"payload is not valid JSON: {e}"
        return json.dumps(doc).encode()


def check_webhook_url(url: str, policy: UrlPolicy, *, resolve: bool = False) -> None:
    """Raise ``ValueError`` if ``url`` can never be delivered to (scheme, host, refused address).

    Meant for the submit route, so a bad ``fal_webhook`` fails at once; the dispatcher checks
    again (with DNS) on every attempt. ``resolve=True`` also resolves the host (blocking).
    """
    try:
        parsed = httpx.URL(url)
        policy.check_url(parsed)
    except (httpx.InvalidURL, BlockedURLError, ValueError) as e:
        raise ValueError(f"invalid webhook URL: {e}") from None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        ipaddress.ip_address(parsed.host)
        literal = True
    except ValueError:
        literal = False
    if literal or resolve:
        try:
            policy.resolve(parsed.host, port)
        except BlockedURLError as e:
            raise ValueError(f"invalid webhook URL: {e}") from None


# --- the dispatcher ---


@dataclass(frozen=True)
class RetrySchedule:
    max_attempts: int = 10
    initial_delay_s: float = 15.0
    max_delay_s: float = 3600.0

    def delay_after(self, attempts: int) -> float:
        """Wait after the ``attempts``-th failed try (1-based)."""
        return min(self.initial_delay_s * math.pow(2, attempts - 1), self.max_delay_s)


class WebhookDispatcher:
    """Posts webhooks from the job store's outbox in the background; :meth:`enqueue` never waits
    on the network. Several dispatchers (API processes) may share one store: each delivery is
    leased to one of them per attempt."""

    def __init__(
        self,
        *,
        signing_key: Ed25519PrivateKey,
        policy: UrlPolicy,
        store: JobStore,
        schedule: RetrySchedule | None = None,
        timeout_s: float = 15.0,
        concurrency: int = 4,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signing_key = signing_key
        self.policy = policy
        self.store = store
        self.schedule = schedule or RetrySchedule()
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        # An attempt tries each address of the host for `timeout_s`; a dispatcher that dies
        # mid-attempt leaves the delivery due again once this lease runs out.
        self.lease_s = 4 * timeout_s + 30.0
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._inflight = 0
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Told each attempt's result: "delivered", "retry" or "failed" (server.metrics).
        self.observer: Callable[[str], None] | None = None

    @classmethod
    def from_settings(cls, settings: Any, store: JobStore) -> WebhookDispatcher:
        return cls(
            signing_key=load_or_create_signing_key(Path(settings.data_dir) / KEY_FILE_NAME),
            policy=UrlPolicy.from_settings(settings),
            store=store,
            schedule=RetrySchedule(
                max_attempts=settings.webhook_max_attempts,
                initial_delay_s=settings.webhook_initial_delay_s,
                max_delay_s=settings.webhook_max_delay_s,
            ),
            timeout_s=settings.webhook_timeout_s,
        )

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return jwks(self.public_key)

    # --- producer side ---

    def enqueue(
        self,
        url: str,
        *,
        request_id: str,
        status: Status,
        payload: Any,
        error: str | None = None,
        gateway_request_id: str | None = None,
        user_id: str = "local",
    ) -> bool:
        """Put one delivery in the outbox and wake the sender; False if this request has one
        already. Thread-safe."""
        body = build_body(
            request_id=request_id,
            gateway_request_id=gateway_request_id,
            status=status,
            payload=payload,
            error=error,
        )
        delivery = Delivery(request_id=request_id, url=url, body=body, user_id=user_id)
        added = self.store.add_delivery(delivery, not_before=self._clock())
        self._wake.set()
        return added

    def counts(self) -> dict[str, int]:
        """Deliveries by state: pending, failed (delivered ones are gone)."""
        return self.store.delivery_counts()

    # --- lifecycle ---

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._inflight = 0
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ovi-webhook")
        self._thread = threading.Thread(target=self._run, name="ovi-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending; attempts in flight get ``timeout`` seconds, pending ones stay stored."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        self.stop()

    # --- sender side ---

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self._dispatch_due()
            except Exception:  # a broken outbox must not kill the thread silently
                log.exception("webhook dispatcher error")
                wait = 1.0
            self._wake.wait(wait)

    def _dispatch_due(self) -> float:
        """Hand due deliveries to the pool; return how long to sleep before looking again."""
        now = self._clock()
        executor = self._executor
        with self._lock:
            free = self.concurrency - self._inflight
            deliveries: list[Delivery] = []
            if free > 0 and executor is not None:
                deliveries = self.store.claim_deliveries(free, lease_s=self.lease_s, now=now)
                self._inflight += len(deliveries)
        for delivery in deliveries:
            assert executor is not None
            executor.submit(self._attempt, delivery)
        nxt = self.store.next_delivery_at()
        if nxt is None:
            return 5.0
        return max(0.0, min(nxt - now, 5.0))

    def _attempt(self, delivery: Delivery) -> None:
        try:
            error = self._post(delivery)
        except Exception as e:  # never let one delivery take the pool down
            log.exception("webhook delivery for %s crashed", delivery.request_id)
            error = f"internal error: {e}"
        attempts = delivery.attempts + 1
        final = attempts >= self.schedule.max_attempts
        try:
            retry_at = None if final else self._clock() + self.schedule.delay_after(attempts)
            self.store.finish_delivery(delivery.request_id, error=error, retry_at=retry_at)
        except Exception:
            log.exception("could not record the webhook attempt for %s", delivery.request_id)
        finally:
            with self._lock:
                self._inflight -= 1
        if self.observer is not None:
            self.observer("delivered" if error is None else "failed" if final else "retry")
        if error is None:
            log.info("webhook for %s delivered (attempt %d)", delivery.request_id, attempts)
        elif final:
            log.error(
                "webhook for %s to %s failed for good after %d attempts: %s",
                delivery.request_id,
                delivery.url,
                attempts,
                error,
            )
        else:
            log.warning(
                "webhook for %s to %s failed (attempt %d of %d): %s",
                delivery.request_id,
                delivery.url,
                attempts,
                self.schedule.max_attempts,
                error,
            )
        self._wake.set()

    def _post(self, delivery: Delivery) -> str | None:
        """One attempt; None on a 2xx answer, else the reason."""
        try:
            url = httpx.URL(delivery.url)
            self.policy.check_url(url)
            port = url.port or (443 if url.scheme == "https" else 80)
            addresses = self.policy.resolve(url.host, port)
        except (httpx.InvalidURL, BlockedURLError, ValueError) as e:
            return str(e)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **sign_webhook(
                self.signing_key,
                request_id=delivery.request_id,
                user_id=delivery.user_id,
                body=delivery.body,
            ),
        }
        reason = "no address"
        # trust_env=False: no environment proxy between us and the checked address.
        with httpx.Client(
            timeout=self.timeout_s,
            follow_redirects=False,
            trust_env=False,
            verify=httpx.create_ssl_context(),
        ) as client:
            for ip in addresses:
                request = pinned_request(
                    client, "POST", url, ip, headers=headers, content=delivery.body
                )
                try:
                    response = client.send(request)
                except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                    reason = f"could not connect: {e or type(e).__name__}"
                    continue
                except httpx.HTTPError as e:
                    return f"{type(e).__name__}: {e}"
                if 200 <= response.status_code < 300:
                    return None
                return f"HTTP {response.status_code}"
        return reason
