"""A local token issuer for load tests: writes an RSA key's JWKS and an ``--auth-config`` that
trusts it (every ``readers`` member reads everything in PROJECT) into DIR, and prints a token
valid for a day. ``loadtest/ab_serving.sh`` runs a JWT variant with it (docs/benchmarks.md)::

    tok=$(.venv/bin/python loadtest/jwt_fixture.py /tmp/jwt demo)
    CREDENTIALS="key $tok" loadtest/ab_serving.sh "" "--auth-config /tmp/jwt/auth.yaml"
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://loadtest.local"
AUDIENCE = "feature-serving"


def main(out: Path, project: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (out / "jwks.json").write_text(
        json.dumps({"keys": [{**jwk, "kid": "lt1", "use": "sig", "alg": "RS256"}]})
    )
    (out / "auth.yaml").write_text(
        f"jwt:\n  jwks: jwks.json\n  issuer: {ISSUER}\n  audience: {AUDIENCE}\n"
        f"  roles:\n    - {{match: readers, project: {project}, role: reader}}\n"
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "loadtest", "groups": ["readers"],
              "iat": now, "exp": now + 86400}  # fmt: skip
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "lt1"})


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "demo"))
