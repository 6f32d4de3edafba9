"""API keys: creation, storage (hashes only), verification and scopes.

A key is ``fsk_<id>_<secret>``: ``id`` (8 hex digits) finds the record, ``secret`` (256 bits)
makes it unguessable. The keys file keeps the SHA-256 of each full key, never the key itself;
SHA-256 (not a slow password hash) fits because the secret is random and long, so there is
nothing to brute-force. Verification compares digests in constant time, and a verified key is
cached so the hot path pays a dict lookup, not a hash. The file is re-read when it changes
(checked at most once a second), so new and revoked keys take effect without a restart.

Keys belong to projects (``projects``; none listed: every project the server serves, as keys made
before projects existed) and carry a role (``serving.security.roles``). Bearer tokens that are
not keys are JWTs, verified by ``serving.security.tokens`` when an ``--auth-config`` configures
them: a verified token becomes the same :class:`Principal` a key does, cached until its ``exp``.
:meth:`Authenticator.authenticate` is the one per-request entry point of every frontend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving import _rust_core
from serving.config import ServeSettings

# moved to serving.config (snapshots need it, below the frontend); kept importable from here
from serving.config import default_keys_file as default_keys_file  # noqa: PLC0414
from serving.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from serving.security.config import SecurityConfig, load_security
from serving.security.limits import Limiter
from serving.security.roles import ROLES, rights, role_of
from serving.security.tokens import TokenVerifier


class CredentialRefused(UnauthenticatedError):
    """A 401 of :meth:`Authenticator.authenticate`, naming whose credential it was (a known
    key's name; "" when nobody can be named) for the audit log."""

    def __init__(self, message: str, identity: str = "") -> None:
        super().__init__(message)
        self.identity = identity


class NoRoleHere(PermissionDeniedError):
    """A 403 of :meth:`Authenticator.authenticate`: a valid credential without a role in the
    frontend's project."""

    def __init__(self, message: str, identity: str, kind: str) -> None:
        super().__init__(message)
        self.identity = identity
        self.kind = kind


log = logging.getLogger("serving.auth")

KEY_PREFIX = "fsk_"
#: how often (seconds) the keys file's modification time is checked on the request path
RELOAD_CHECK_SECONDS = 1.0
ALL = "*"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One key's record as stored (no secret)."""

    key_id: str
    name: str
    sha256: str
    #: feature views or feature services the key may read; ``*`` = everything
    read: tuple[str, ...] = ()
    #: feature views the key may write (push, ingest); ``*`` = every view
    write: tuple[str, ...] = ()
    admin: bool = False
    created_at: float = 0.0
    #: Unix time after which the key is refused; None = never
    expires_at: float | None = None
    revoked: bool = False
    #: projects the key belongs to; empty = every project the server serves (keys made
    #: before projects existed, and single-project servers)
    projects: tuple[str, ...] = ()
    #: reader, writer or admin ("" in records made before roles: derived from the scopes)
    role: str = ""

    def in_project(self, project: str) -> bool:
        return not self.projects or ALL in self.projects or project in self.projects

    @property
    def effective_role(self) -> str:
        return self.role or role_of(self.read, self.write, self.admin)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> ApiKey:
        return ApiKey(
            key_id=str(d["key_id"]),
            name=str(d["name"]),
            sha256=str(d["sha256"]),
            read=tuple(d.get("read", ())),
            write=tuple(d.get("write", ())),
            admin=bool(d.get("admin", False)),
            created_at=float(d.get("created_at", 0.0)),
            expires_at=None if d.get("expires_at") is None else float(d["expires_at"]),
            revoked=bool(d.get("revoked", False)),
            projects=tuple(d.get("projects", ())),
            role=str(d.get("role", "")),
        )


class KeyFile:
    """The keys file: a JSON list of :class:`ApiKey` records, written atomically (0600)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> list[ApiKey]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise InvalidArgumentError(f"keys file '{self.path}' is unreadable: {e}") from None
        return [ApiKey.from_json(d) for d in data.get("keys", [])]

    def save(self, keys: Sequence[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"keys": [k.to_json() for k in keys]}, indent=2)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create(
        self,
        name: str,
        *,
        read: Sequence[str] = (),
        write: Sequence[str] = (),
        admin: bool = False,
        expires_in_seconds: float | None = None,
        projects: Sequence[str] = (),
        role: str = "",
    ) -> tuple[str, ApiKey]:
        """Creates a key; returns the token (shown once, never stored) and its record.
        ``role`` fills the scopes not given: reader reads everything, writer also writes
        every view, admin also administers; explicit ``read`` / ``write`` narrow them."""
        if not name:
            raise InvalidArgumentError("a key needs a name")
        if role:
            if role not in ROLES:
                raise InvalidArgumentError(f"unknown role '{role}': expected {', '.join(ROLES)}")
            read = read or [ALL]
            if role in ("writer", "admin"):
                write = write or [ALL]
            admin = admin or role == "admin"
        keys = self.load()
        if any(k.name == name and not k.revoked for k in keys):
            raise InvalidArgumentError(f"a key named '{name}' exists; revoke it first")
        key_id = secrets.token_hex(4)
        token = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        rec = ApiKey(
            key_id=key_id,
            name=name,
            sha256=_digest(token),
            read=tuple(read),
            write=tuple(write),
            admin=admin,
            created_at=now,
            expires_at=None if expires_in_seconds is None else now + expires_in_seconds,
            projects=tuple(projects),
            role=role,
        )
        self.save([*keys, rec])
        return token, rec

    def active(self, token: str) -> ApiKey | None:
        """The record of ``token`` if it is neither revoked nor expired."""
        digest = _digest(token)
        for k in self.load():
            if k.sha256 == digest and not k.revoked and not k.expired():
                return k
        return None

    def revoke(self, name_or_id: str) -> ApiKey:
        keys = self.load()
        for i, k in enumerate(keys):
            if name_or_id in (k.name, k.key_id) and not k.revoked:
                keys[i] = dataclasses.replace(k, revoked=True)
                self.save(keys)
                return keys[i]
        raise NotFoundError(f"no active key named or with id '{name_or_id}'")


@dataclass(frozen=True)
class Principal:
    """The verified caller of one request: an API key, or a token whose grants in the
    server's project became a key-shaped record (``kind = "jwt"``)."""

    key: ApiKey
    #: id of the key's read scope registered in the Rust core
    scope_id: int
    read_all: bool = field(default=False)
    #: "api_key" or "jwt"
    kind: str = "api_key"
    #: Unix time after which the credential is refused (None: never)
    expires_at: float | None = None

    @property
    def identity(self) -> str:
        """Who the caller is, for logs and the audit log (a key's name, ``jwt:<subject>``);
        never the secret."""
        return self.key.name

    @property
    def role(self) -> str:
        return self.key.effective_role

    def require_admin(self) -> None:
        if not self.key.admin:
            raise PermissionDeniedError(
                "this API key is not an admin key"
                if self.kind == "api_key"
                else "this token has no admin role in this project"
            )

    def require_write(self, view: str) -> None:
        if ALL not in self.key.write and view not in self.key.write:
            raise PermissionDeniedError(f"{self._what()} may not write feature view '{view}'")

    def _what(self) -> str:
        return "this API key" if self.kind == "api_key" else "this token"


#: the Rust core's read-scope ids of tokens start here (a key's id is its 32-bit key id)
TOKEN_SCOPE_BASE = 1 << 32
#: verified tokens cached at most (a full cache drops its expired entries, then all)
MAX_CACHED_TOKENS = 65536


class Authenticator:
    """Verifies ``Authorization: Bearer <key>`` headers against the keys file."""

    def __init__(
        self,
        keys_file: KeyFile,
        core: _rust_core.Store | _rust_core.RouterCore,
        *,
        tokens: TokenVerifier | None = None,
        project: str = "",
    ) -> None:
        self._file = keys_file
        self._core = core
        #: bearer tokens that are not API keys are verified by this (None: refused)
        self.tokens = tokens
        #: the project this frontend serves (a key of another project is refused 403)
        self.project = project
        #: read scope (sorted view names) -> its Rust scope id, shared by tokens alike
        self._token_scopes: dict[tuple[str, ...], int] = {}
        #: per-identity request rate and concurrency (None: unlimited); the rate is taken
        #: here, the concurrency by the frontends around the handler (enter / leave)
        self.limiter: Limiter | None = None
        self._by_id: dict[str, ApiKey] = {}
        self._verified: dict[str, Principal] = {}
        self._mtime: float | None = None
        self._loaded = False
        self._next_check = 0.0
        self.failures = 0
        #: key ids that authenticated since the last :meth:`note_uses`: one set add per
        #: request; the console's sampler turns them into times every few seconds
        self._used: set[str] = set()
        #: key id -> Unix time of its last use seen by this process (to within a sample)
        self.last_used: dict[str, float] = {}
        self._reload()

    def _reload(self) -> None:
        try:
            mtime = self._file.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and self._loaded:
            return
        keys = self._file.load()
        self._by_id = {k.key_id: k for k in keys}
        self._verified.clear()
        self._token_scopes.clear()
        self._core.clear_scopes()
        self._mtime, self._loaded = mtime, True
        usable = [k for k in keys if not k.revoked and not k.expired()]
        log.info("loaded %d API keys from %s", len(keys), self._file.path)
        if not usable:
            # a node restored from a snapshot of another node's store, or started with another
            # --data-dir, has no keys file of its own: say so loudly, since every request fails
            log.warning(
                "no usable API key in %s (%d revoked or expired): every request is refused "
                "(401) until one is created: `feature-serving keys create --name NAME --read "
                "VIEW_OR_SERVICE --keys-file %s` (picked up within a second); --no-auth serves "
                "without keys (local experiments only)",
                self._file.path,
                len(keys),
                self._file.path,
            )

    @classmethod
    def for_settings(
        cls,
        settings: ServeSettings,
        core: _rust_core.Store | _rust_core.RouterCore,
        keys_file: KeyFile,
        project: str,
        security: SecurityConfig | None = None,
    ) -> Authenticator:
        """The authenticator of a frontend: API keys, plus tokens when the ``--auth-config``
        (``security``, else read from the settings) configures a JWT source."""
        if security is None and settings.auth_config:
            security = load_security(settings.auth_config)
        tokens = None
        if security is not None and security.jwt is not None:
            tokens = TokenVerifier(security.jwt)
        auth = cls(keys_file, core, tokens=tokens, project=project)
        if security is not None and security.limits is not None:
            auth.limiter = Limiter(security.limits)
        return auth

    def set_project(self, project: str) -> None:
        """The frontend's project changed (a registry reload): cached callers are checked
        against the new one."""
        if project != self.project:
            self.project = project
            self._verified.clear()

    @property
    def keys_file(self) -> KeyFile:
        return self._file

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_CHECK_SECONDS
            self._reload()

    def authenticate(self, header: str | None) -> Principal:
        """The principal of a request, or :class:`UnauthenticatedError`."""
        self._maybe_reload()
        if not header:
            raise self._fail("missing API key: send 'authorization: Bearer <key>'")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._fail("malformed authorization header: expected 'Bearer <key>'")
        cached = self._verified.get(token)
        if cached is not None:
            if cached.expires_at is not None and time.time() >= cached.expires_at:
                self._verified.pop(token, None)
                raise self._fail(
                    "API key expired" if cached.kind == "api_key" else "token expired",
                    cached.identity,
                )
            self._used.add(cached.key.key_id)
            if self.limiter is not None:
                self.limiter.take(cached.key.name)
            return cached
        if self.tokens is not None and not token.startswith(KEY_PREFIX) and token.count(".") == 2:
            return self._authenticate_token(token)
        parts = token.split("_")
        rec = (
            self._by_id.get(parts[1]) if len(parts) >= 3 and token.startswith(KEY_PREFIX) else None
        )
        # Compare against a dummy digest when the id is unknown, so timing does not tell
        # whether an id exists.
        expected = rec.sha256 if rec else _digest("unknown")
        if not hmac.compare_digest(_digest(token), expected) or rec is None:
            raise self._fail("unknown API key")
        if rec.revoked:
            raise self._fail("API key revoked", rec.name)
        if rec.expired():
            raise self._fail("API key expired", rec.name)
        if not rec.in_project(self.project):
            raise self._deny(
                f"this API key has no role in project '{self.project}'", rec.name, "api_key"
            )
        scope_id = int(rec.key_id, 16)
        read_all = ALL in rec.read
        self._core.set_scope(scope_id, None if read_all else list(rec.read), list(rec.read))
        principal = Principal(rec, scope_id, read_all, expires_at=rec.expires_at)
        self._verified[token] = principal
        self._used.add(rec.key_id)
        if self.limiter is not None:
            self.limiter.take(rec.name)
        return principal

    def _authenticate_token(self, token: str) -> Principal:
        """Verifies a JWT once (signature, issuer, audience, expiry) and caches the
        principal its grants in this project make, until the token expires."""
        assert self.tokens is not None
        try:
            verified = self.tokens.verify(token)
        except UnauthenticatedError as e:
            raise self._fail(e.message) from None
        identity = f"jwt:{verified.subject}"
        r = rights(verified.grants, self.project)
        if not r.any:
            raise self._deny(f"this token has no role in project '{self.project}'", identity, "jwt")
        read_all = ALL in r.read
        scope_id = self._token_scopes.get(r.read)
        if scope_id is None:
            scope_id = TOKEN_SCOPE_BASE + len(self._token_scopes)
            self._token_scopes[r.read] = scope_id
            self._core.set_scope(scope_id, None if read_all else list(r.read), list(r.read))
        record = ApiKey(
            key_id="jwt",
            name=identity,
            sha256="",
            read=r.read,
            write=r.write,
            admin=r.admin,
            expires_at=verified.expires_at,
            projects=(self.project,),
            role=r.role,
        )
        principal = Principal(record, scope_id, read_all, "jwt", verified.expires_at)
        if len(self._verified) >= MAX_CACHED_TOKENS:
            now = time.time()
            for t, p in list(self._verified.items()):
                if p.expires_at is not None and p.expires_at <= now:
                    del self._verified[t]
            if len(self._verified) >= MAX_CACHED_TOKENS:
                self._verified.clear()
        self._verified[token] = principal
        if self.limiter is not None:
            self.limiter.take(identity)
        return principal

    def note_uses(self, now: float | None = None) -> None:
        """Stamps the keys used since the last call with ``now`` (off the request path)."""
        if self._used:
            at = time.time() if now is None else now
            used, self._used = self._used, set()
            for key_id in used:
                self.last_used[key_id] = at

    def _fail(self, message: str, identity: str = "") -> CredentialRefused:
        self.failures += 1
        # Never log the key itself.
        log.warning("authentication failed: %s", message)
        return CredentialRefused(message, identity)

    def _deny(self, message: str, identity: str, kind: str) -> NoRoleHere:
        log.warning("permission denied to %s (%s): %s", identity, kind, message)
        return NoRoleHere(message, identity, kind)
