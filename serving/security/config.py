"""The ``--auth-config`` file (env ``FS_AUTH_CONFIG``): identity sources beyond API keys.

.. code-block:: yaml

    jwt:
      jwks: https://issuer.example.com/.well-known/jwks.json   # or a local file
      jwks_ca: /etc/ssl/issuer-ca.pem   # optional CA bundle for an https:// JWKS
      issuer: https://issuer.example.com
      audience: feature-serving
      algorithms: [RS256]               # asymmetric only; default RS256, ES256
      leeway_seconds: 30                # clock skew allowed on exp / nbf / iat
      refresh_seconds: 300              # re-fetch of a URL JWKS (file: checked every second)
      subject_claim: sub                # who the caller is, in the audit log
      claim: groups                     # claim whose value(s) are matched below
      roles:
        - {match: team-a-readers, project: demo, role: reader, views: [driver_stats]}
        - {match: platform, project: "*", role: admin}
    audit:
      path: /var/log/feature-serving/audit.jsonl   # or - for stdout
      max_bytes: 104857600                         # rotate at 100 MiB ...
      backups: 5                                   # ... keeping 5 old files
      read_sample: 0.01                            # log 1 % of reads
    limits:
      default: {rate: 200, burst: 400, concurrency: 32}   # per identity
      identities:
        ranker: {rate: 5000, burst: 10000, concurrency: 256}

docs/security.md describes every field and the Kubernetes service-account mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from serving.errors import InvalidArgumentError
from serving.security.audit import AuditConfig, audit_config
from serving.security.limits import LimitsConfig, limits_config
from serving.security.roles import ALL, Grant

#: the algorithms a token may be signed with: asymmetric only, so that a public key taken from
#: the JWKS can never serve as an HMAC secret (algorithm confusion)
ASYMMETRIC = frozenset(
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
)


@dataclass(frozen=True)
class ClaimRole:
    """Callers whose ``claim`` holds ``match`` get ``grant``."""

    match: str
    grant: Grant


@dataclass(frozen=True)
class JwtConfig:
    jwks: str
    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwks_ca: str = ""
    leeway_seconds: float = 30.0
    refresh_seconds: float = 300.0
    subject_claim: str = "sub"
    #: claim path (``a.b`` is claim ``a``'s member ``b``; a list names keys holding dots)
    claim: tuple[str, ...] = ("groups",)
    roles: tuple[ClaimRole, ...] = ()


@dataclass(frozen=True)
class SecurityConfig:
    jwt: JwtConfig | None = None
    audit: AuditConfig | None = None
    limits: LimitsConfig | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def _need(d: dict[str, Any], key: str, where: str) -> Any:
    if d.get(key) in (None, ""):
        raise InvalidArgumentError(f"{where}: '{key}' is required")
    return d[key]


def _strings(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise InvalidArgumentError(f"{where}: expected a string or a list of strings, got {v!r}")


def _jwt(d: Any, where: str, base: Path) -> JwtConfig:
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"{where}: expected a mapping")
    known = {
        "jwks", "jwks_ca", "issuer", "audience", "algorithms", "leeway_seconds",
        "refresh_seconds", "subject_claim", "claim", "roles",
    }  # fmt: skip
    if unknown := sorted(set(d) - known):
        raise InvalidArgumentError(
            f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    jwks = str(_need(d, "jwks", where))
    if jwks.startswith("http://"):
        raise InvalidArgumentError(
            f"{where}.jwks: '{jwks}' is plain http; a key set must come over https:// (or from a "
            "file), since whoever can change it in transit can mint tokens"
        )
    if not jwks.startswith("https://"):
        jwks = str((base / jwks).resolve())
    algorithms = _strings(d.get("algorithms", ["RS256", "ES256"]), f"{where}.algorithms")
    if bad := [a for a in algorithms if a not in ASYMMETRIC]:
        raise InvalidArgumentError(
            f"{where}.algorithms: {', '.join(bad)} not allowed: only asymmetric algorithms "
            f"({', '.join(sorted(ASYMMETRIC))}); HMAC would let the public JWKS sign tokens"
        )
    claim_raw = d.get("claim", "groups")
    claim = tuple(claim_raw.split(".")) if isinstance(claim_raw, str) else claim_raw
    claim = _strings(list(claim), f"{where}.claim")
    roles_raw = d.get("roles") or []
    if not isinstance(roles_raw, list):
        raise InvalidArgumentError(f"{where}.roles: expected a list of mappings")
    roles = []
    for i, r in enumerate(roles_raw):
        rw = f"{where}.roles[{i}]"
        if not isinstance(r, dict):
            raise InvalidArgumentError(f"{rw}: expected a mapping with match, project, role")
        if unknown := sorted(set(r) - {"match", "project", "role", "views"}):
            raise InvalidArgumentError(f"{rw}: unknown field(s) {', '.join(unknown)}")
        views = _strings(r.get("views", [ALL]), f"{rw}.views")
        try:
            grant = Grant(str(r.get("project", ALL)), str(_need(r, "role", rw)), views)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"{rw}: {e.message}") from None
        roles.append(ClaimRole(str(_need(r, "match", rw)), grant))
    ca = str(d.get("jwks_ca") or "")
    return JwtConfig(
        jwks=jwks,
        issuer=str(_need(d, "issuer", where)),
        audience=_strings(_need(d, "audience", where), f"{where}.audience"),
        algorithms=algorithms,
        jwks_ca=str((base / ca).resolve()) if ca else "",
        leeway_seconds=float(d.get("leeway_seconds", 30.0)),
        refresh_seconds=float(d.get("refresh_seconds", 300.0)),
        subject_claim=str(d.get("subject_claim", "sub")),
        claim=claim,
        roles=tuple(roles),
    )


def load_security(path: str | Path) -> SecurityConfig:
    """Parses the auth config file; relative paths in it are relative to the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InvalidArgumentError(f"auth config '{p}': {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"auth config '{p}': expected a mapping")
    if unknown := sorted(set(data) - {"jwt", "audit", "limits"}):
        raise InvalidArgumentError(
            f"auth config '{p}': unknown section(s) {', '.join(unknown)} (known: audit, jwt, "
            "limits)"
        )
    jwt = _jwt(data["jwt"], f"auth config '{p}': jwt", p.parent) if "jwt" in data else None
    audit = None
    if "audit" in data:
        audit = audit_config(data["audit"], f"auth config '{p}': audit")
        if audit.path != "-":
            audit = replace(audit, path=str((p.parent / audit.path).resolve()))
    limits = (
        limits_config(data["limits"], f"auth config '{p}': limits") if "limits" in data else None
    )
    return SecurityConfig(jwt=jwt, audit=audit, limits=limits, raw=data)
