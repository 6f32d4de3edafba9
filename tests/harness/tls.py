"""Test certificates made with the `openssl` CLI (Debian package openssl)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> None:
    """A CA (``ca.pem``), a server certificate for 127.0.0.1 (``server.pem``/``.key``) and a
    client certificate (``client.pem``/``.key``) in ``d``, all signed by the CA. Fails (not
    skips) without openssl: the TLS tests would vanish silently."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required (Debian package openssl)")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "1", "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext",
                 cwd=d)  # fmt: skip


def client_context(d: Path, *, client_cert: bool = True) -> ssl.SSLContext:
    """An HTTPS client context trusting the CA of :func:`make_certs` in ``d``, presenting the
    client certificate (``client_cert``) as a mutual-TLS listener asks."""
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    if client_cert:
        ctx.load_cert_chain(str(d / "client.pem"), str(d / "client.key"))
    return ctx
