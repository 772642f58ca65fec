"""`ovi tls init DIR [--name NAME ...]`: a local CA and a server certificate (`server/tls.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tls init`` on the ``ovi`` CLI; the chosen parser's ``func(args) -> int`` runs it."""
    tls = sub.add_parser("tls", help="local TLS certificates for https clients")
    tls_sub = tls.add_subparsers(dest="tls_command", required=True)
    init = tls_sub.add_parser(
        "init",
        help="create a local CA, a server certificate and a CA bundle",
        description=(
            "Create DIR/{ca.pem, ca-key.pem, server.pem, server-key.pem, bundle.pem}. "
            "The server certificate covers localhost, 127.0.0.1 and ::1 plus every --name"
            " (and fal's own hosts with --fal-hosts)."
        ),
    )
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument(
        "--name",
        dest="names",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the server certificate (repeatable)",
    )
    init.add_argument(
        "--fal-hosts",
        action="store_true",
        help="also cover every host fal's clients call (fal.run, queue.fal.run, rest.fal.ai,"
        " v3.fal.media, ...): point them at this server for a drop-in with no code change",
    )
    init.set_defaults(func=run)
    return tls


def run(args: argparse.Namespace) -> int:
    from server.fal_hosts import FAL_HOSTS
    from server.tls import init_tls

    files = init_tls(args.directory, args.names, fal_hosts=args.fal_hosts)
    print(f"CA certificate:     {files.ca_cert}")
    print(f"server certificate: {files.server_cert}")
    print(f"server key:         {files.server_key}")
    print(f"CA bundle:          {files.bundle}")
    print()
    print("Serve:   ovi serve --tls-cert", files.server_cert, "--tls-key", files.server_key)
    print("Python:  export SSL_CERT_FILE=" + str(files.bundle.resolve()))
    print("Node:    export NODE_EXTRA_CA_CERTS=" + str(files.ca_cert.resolve()))
    if args.fal_hosts:
        print("Hosts:   point these names at the server (docs/drop-in.md):")
        print("         " + " ".join(FAL_HOSTS))
    return 0
