"""server/tls.py: the local CA, the server certificate and the bundle work for a real handshake."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cryptography import x509

from server.tls import init_tls


def _sans(path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips


def test_files_names_and_permissions(tmp_path):
    files = init_tls(tmp_path / "tls", ["ovi.lan", "10.1.2.3", "[fd00::5]"])
    for path in files:
        assert path.is_file()
    dns, ips = _sans(files.server_cert)
    assert dns == {"localhost", "ovi.lan"}
    assert ips == {"127.0.0.1", "::1", "10.1.2.3", "fd00::5"}
    for secret in (files.server_key, tmp_path / "tls" / "ca-key.pem"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    bundle = files.bundle.read_text()
    assert files.ca_cert.read_text().strip() in bundle
    assert bundle.count("BEGIN CERTIFICATE") > 50  # certifi's public roots stay in


def test_ca_is_reused_and_server_cert_renewed(tmp_path):
    first = init_tls(tmp_path)
    ca_pem, server_pem = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    second = init_tls(tmp_path, ["extra.lan"])
    assert second.ca_cert.read_bytes() == ca_pem
    assert second.server_cert.read_bytes() != server_pem
    assert "extra.lan" in _sans(second.server_cert)[0]


def test_bad_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a DNS name"):
        init_tls(tmp_path, ["bad..name"])


@contextmanager
def tls_server(files) -> Iterator[int]:
    """A one-connection TLS server on loopback with the made certificate; yields its port. It
    sends b"hello" once the handshake succeeds."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
def test_real_handshake_with_bundle(tmp_path, server_name):
    files = init_tls(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(files.bundle))
    if hasattr(ssl, "VERIFY_X509_STRICT"):
        client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13 does by default
    with tls_server(files) as port, socket.create_connection(("127.0.0.1", port)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            assert tls.recv(5) == b"hello"
            assert tls.getpeercert() is not None


def test_wrong_name_fails_handshake(tmp_path):
    files = init_tls(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(files.bundle))
    with tls_server(files) as port, socket.create_connection(("127.0.0.1", port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            client_ctx.wrap_socket(raw, server_hostname="not-in-the-cert.example")
