"""TLS of the frontends: the server side of both listeners, and a router's side to its nodes."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from serving.config import ServeSettings
from serving.errors import InvalidArgumentError


def read_tls_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read TLS file '{path}': {e}") from None


def server_credentials(s: ServeSettings) -> grpc.ServerCredentials | None:
    if not s.tls_cert:
        return None
    if not s.tls_key:
        raise InvalidArgumentError("--tls-cert needs --tls-key")
    ca = read_tls_file(s.tls_client_ca) if s.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read_tls_file(s.tls_key), read_tls_file(s.tls_cert))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def server_ssl_context(s: ServeSettings) -> ssl.SSLContext | None:
    if not s.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(s.tls_cert, s.tls_key or None)
        if s.tls_client_ca:
            ctx.load_verify_locations(s.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgumentError(f"TLS setup failed: {e}") from None
    return ctx


def node_credentials(s: ServeSettings) -> grpc.ChannelCredentials | None:
    """TLS credentials for the router's channels to the nodes (None: plaintext)."""
    if not s.node_tls_ca:
        if s.node_tls_cert or s.node_tls_key:
            raise InvalidArgumentError("--node-tls-cert/--node-tls-key need --node-tls-ca")
        return None
    if bool(s.node_tls_cert) != bool(s.node_tls_key):
        raise InvalidArgumentError("give both --node-tls-cert and --node-tls-key, or neither")
    ca = read_tls_file(s.node_tls_ca)
    if s.node_tls_cert:
        return grpc.ssl_channel_credentials(
            ca, read_tls_file(s.node_tls_key), read_tls_file(s.node_tls_cert)
        )
    return grpc.ssl_channel_credentials(ca)


def node_ssl_context(s: ServeSettings) -> ssl.SSLContext | None:
    """The TLS context of the HTTP parts (the same files as :func:`node_credentials`)."""
    if node_credentials(s) is None:
        return None
    ctx = ssl.create_default_context(cafile=s.node_tls_ca)
    if s.node_tls_cert:
        ctx.load_cert_chain(s.node_tls_cert, s.node_tls_key)
    return ctx
