"""cli/tls.py: `ovi tls init DIR --name ...` writes the CA, the certificate and the bundle."""

from cryptography import x509

from cli.main import main


def test_tls_init(tmp_path, capsys):
    argv = ["tls", "init", str(tmp_path / "d"), "--name", "a.lan", "--name", "192.168.1.9"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "SSL_CERT_FILE=" in out and "NODE_EXTRA_CA_CERTS=" in out
    cert = x509.load_pem_x509_certificate((tmp_path / "d" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "a.lan" in san.get_values_for_type(x509.DNSName)
    assert "192.168.1.9" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_tls_init_fal_hosts(tmp_path, capsys):
    from server.fal_hosts import FAL_HOSTS

    assert main(["tls", "init", str(tmp_path / "d"), "--fal-hosts"]) == 0
    assert "queue.fal.run" in capsys.readouterr().out  # the names to point at the server
    cert = x509.load_pem_x509_certificate((tmp_path / "d" / "server.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName))
    assert set(FAL_HOSTS) | {"localhost"} == names
