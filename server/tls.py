"""Local TLS: a private CA plus a server certificate, for clients that only speak https.

The Python ``fal-client`` always builds ``https://`` URLs, so running it against this server on a
workstation needs a certificate it trusts. ``ovi tls init DIR`` writes:

    DIR/ca.pem          the local CA certificate (trust this)
    DIR/ca-key.pem      its private key (0600; reused on later runs so trust survives re-issues)
    DIR/server.pem      the server certificate, signed by the CA (``ovi serve --tls-cert``)
    DIR/server-key.pem  its private key (0600; ``ovi serve --tls-key``)
    DIR/bundle.pem      certifi's CA bundle + our CA, for ``SSL_CERT_FILE`` (which replaces the
                        whole CA set in httpx, so public hosts must stay trusted too)

Node reads extra CAs from ``NODE_EXTRA_CA_CERTS=DIR/ca.pem`` (it adds, not replaces).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.fal_hosts import FAL_HOSTS

DEFAULT_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_VALIDITY = dt.timedelta(days=3650)
# 825 days is the longest lifetime Apple platforms accept for a TLS server certificate.
SERVER_VALIDITY = dt.timedelta(days=825)


class TLSFiles(NamedTuple):
    ca_cert: Path
    server_cert: Path
    server_key: Path
    bundle: Path


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_names(names: Sequence[str]) -> tuple[list[str], list[IPAddress]]:
    """Split names into DNS names and IP addresses, defaults first, without duplicates."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    for raw in (*DEFAULT_NAMES, *names):
        name = raw.strip().strip("[]")
        if not name:
            continue
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            host = name.lower().rstrip(".")
            if not all(part and len(part) <= 63 for part in host.removeprefix("*.").split(".")):
                raise ValueError(f"not a DNS name or IP address: {raw!r}") from None
            if host not in dns:
                dns.append(host)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by the owner only (created 0600, never world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_or_make_ca(
    directory: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC private key")
        if cert.not_valid_after_utc > now + dt.timedelta(days=30):
            return cert, key

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ovi-server local CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, "ovi-server local CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), now, now + CA_VALIDITY, ca=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    until: dt.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """A certificate valid from 5 minutes ago to `until`: a CA that signs certificates (and
    CRLs), or a leaf that only signs."""
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(usage, critical=True)
    )


def init_tls(
    directory: str | os.PathLike[str], names: Sequence[str] = (), *, fal_hosts: bool = False
) -> TLSFiles:
    """Create (or refresh) the local CA, a server certificate and a CA bundle in ``directory``.

    ``names`` adds DNS names or IP addresses to the server certificate's SAN, beyond the defaults
    ``localhost``, ``127.0.0.1`` and ``::1``; ``fal_hosts`` adds every host fal's clients call
    (``server.fal_hosts.FAL_HOSTS``: fal.run, queue.fal.run, rest.fal.ai, ...), for the zero-change
    drop-in of docs/drop-in.md. An existing CA is reused, so clients that already trust it keep
    working; the server certificate and bundle are always rewritten.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    dns, ips = _parse_names([*names, *(FAL_HOSTS if fal_hosts else ())])
    now = dt.datetime.now(dt.timezone.utc)
    ca_cert, ca_key = _load_or_make_ca(root, now)

    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [*(x509.DNSName(d) for d in dns), *(x509.IPAddress(ip) for ip in ips)]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])])
    until = min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), now, until, ca=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TLSFiles(
        ca_cert=root / "ca.pem",
        server_cert=root / "server.pem",
        server_key=root / "server-key.pem",
        bundle=root / "bundle.pem",
    )
    _write_private(files.server_key, _key_pem(key))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    public = Path(certifi.where()).read_bytes().rstrip(b"\n")
    files.bundle.write_bytes(public + b"\n\n# ovi-server local CA\n" + ca_pem)
    return files
