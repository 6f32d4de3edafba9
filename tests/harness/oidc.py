"""A token issuer for the tests: locally generated RSA key pairs, their JWKS as a file and
served over HTTPS on loopback (a real ``http.server`` with a certificate of :mod:`tls`), and
tokens signed with PyJWT, plus the forged ones the attacks need."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness.tls import make_certs

ISSUER = "https://issuer.test"
AUDIENCE = "feature-serving"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Issuer:
    """Signing keys by kid; :meth:`publish` writes the JWKS of the keys in ``published``."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.jwks_file = d / "jwks.json"
        self._httpd: http.server.ThreadingHTTPServer | None = None
        #: how many times the JWKS was fetched over HTTPS
        self.fetches = 0

    def new_key(self, kid: str, *, publish: bool = True) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.append(kid)
            self.publish()

    def publish(self, kids: list[str] | None = None) -> None:
        if kids is not None:
            self.published = list(kids)
        keys = []
        for kid in self.published:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        tmp = self.jwks_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": keys}))
        tmp.replace(self.jwks_file)

    def public_pem(self, kid: str) -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600}
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, kid: str = "k1", *, signer: str | None = None, **claims: Any) -> str:
        """A token with ``kid`` in its header, signed by key ``signer`` (default: ``kid``)."""
        return jwt.encode(
            self.claims(**claims),
            self.keys[signer or kid],
            algorithm="RS256",
            headers={"kid": kid},
        )

    def forged(self, alg: str, kid: str = "k1", **claims: Any) -> str:
        """``alg: none`` (no signature), or ``HS256`` keyed with the public key's PEM: the
        algorithm-confusion attack (PyJWT refuses to make either, so they are built here)."""
        header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        payload = _b64(json.dumps(self.claims(**claims)).encode())
        signing = f"{header}.{payload}".encode()
        if alg == "none":
            return f"{header}.{payload}."
        mac = hmac.new(self.public_pem(kid), signing, hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(mac)}"

    # -- the JWKS over HTTPS -----------------------------------------------------------------

    def serve(self) -> str:
        """Serves the JWKS file at ``https://127.0.0.1:PORT/jwks.json``; the URL."""
        make_certs(self.dir)
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                body = issuer.jwks_file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.dir / "server.pem"), str(self.dir / "server.key"))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self._httpd = httpd
        return f"https://127.0.0.1:{httpd.server_address[1]}/jwks.json"

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
