"""server/tls.py: the local CA, the server certificate and the bundle work for a real handshake."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509

from server.tls import add_tls_commands, init_tls


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


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
def test_real_handshake_with_bundle(tmp_path, server_name):
    files = init_tls(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(files.bundle))
    if hasattr(ssl, "VERIFY_X509_STRICT"):
        client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13 does by default
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            assert tls.recv(5) == b"hello"
            cert = tls.getpeercert()
            assert cert is not None
    thread.join(5)
    listener.close()


def test_wrong_name_fails_handshake(tmp_path):
    files = init_tls(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    threading.Thread(target=serve, daemon=True).start()
    client_ctx = ssl.create_default_context(cafile=str(files.bundle))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            client_ctx.wrap_socket(raw, server_hostname="not-in-the-cert.example")
    listener.close()


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ovi")
    add_tls_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["tls", "init", str(tmp_path / "d"), "--name", "a.lan", "--name", "192.168.1.9"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "SSL_CERT_FILE=" in out and "NODE_EXTRA_CA_CERTS=" in out
    dns, ips = _sans(tmp_path / "d" / "server.pem")
    assert "a.lan" in dns and "192.168.1.9" in ips
    assert ipaddress.ip_address("192.168.1.9")
