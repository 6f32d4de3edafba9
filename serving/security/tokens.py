"""Bearer tokens (JWT): verified against a JWKS, their claims mapped to grants.

Every check runs once per token (the caller caches the outcome until the token's ``exp``):
the header's ``alg`` must be one of the configured asymmetric algorithms (which refuses
``alg: none`` and an HMAC signature made with a public key from the JWKS as its secret), the
key id must be in the key set, and the key's own ``alg`` (when the JWK names one) must match.
PyJWT then checks the signature, ``exp`` / ``nbf`` / ``iat`` (with ``leeway_seconds``), the
issuer and the audience; ``exp``, ``iss`` and ``aud`` are required. Each refusal says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from serving.errors import UnauthenticatedError
from serving.security.config import JwtConfig
from serving.security.jwks import JwksSource
from serving.security.roles import Grant


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    grants: tuple[Grant, ...]
    #: Unix time after which the token is refused: its ``exp`` plus the leeway
    expires_at: float


def claim_values(claims: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    """The string(s) at ``path`` in ``claims`` (a string, or a list of them; else none)."""
    value: Any = claims
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class TokenVerifier:
    """Checks one token against the configured issuer, audience and key set."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self.jwks = JwksSource(
            config.jwks, ca_file=config.jwks_ca, refresh_seconds=config.refresh_seconds
        )

    def verify(self, token: str) -> VerifiedToken:
        """The token's subject, grants and expiry, or :class:`UnauthenticatedError` naming
        what is wrong with it."""
        cfg = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as e:
            raise UnauthenticatedError(f"malformed bearer token: {e}") from None
        alg = header.get("alg")
        if alg not in cfg.algorithms:
            raise UnauthenticatedError(
                f"token algorithm {alg!r} is not accepted (accepted: {', '.join(cfg.algorithms)})"
            )
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise UnauthenticatedError("malformed bearer token: 'kid' is not a string")
        key = self.jwks.get(kid)
        if key is None:
            raise UnauthenticatedError(
                f"token signed with key id {kid!r}, which the JWKS does not hold (it is "
                "re-fetched; retry if the issuer has just rotated its keys)"
            )
        if key.alg is not None and key.alg != alg:
            raise UnauthenticatedError(
                f"token algorithm {alg!r} does not match its key's {key.alg}"
            )
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=list(cfg.audience),
                issuer=cfg.issuer,
                leeway=cfg.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("token expired") from None
        except jwt.InvalidIssuerError:
            raise UnauthenticatedError(f"token issuer is not '{cfg.issuer}'") from None
        except jwt.InvalidAudienceError:
            raise UnauthenticatedError(
                f"token audience is not {' or '.join(repr(a) for a in cfg.audience)}"
            ) from None
        except jwt.ImmatureSignatureError:
            raise UnauthenticatedError("token not valid yet (nbf / iat in the future)") from None
        except jwt.MissingRequiredClaimError as e:
            raise UnauthenticatedError(f"token lacks the '{e.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise UnauthenticatedError("token signature does not verify") from None
        except (jwt.InvalidKeyError, jwt.InvalidAlgorithmError) as e:
            raise UnauthenticatedError(f"token does not fit its key: {e}") from None
        except jwt.InvalidTokenError as e:
            raise UnauthenticatedError(f"invalid bearer token: {e}") from None
        values = set(claim_values(claims, cfg.claim))
        grants = tuple(r.grant for r in cfg.roles if r.match in values)
        subject = claims.get(cfg.subject_claim)
        return VerifiedToken(
            subject=str(subject) if subject is not None else "?",
            grants=grants,
            # the cache honours the same leeway the check did
            expires_at=float(claims["exp"]) + cfg.leeway_seconds,
        )
