"""API keys: creation, storage (hashes only), verification and scopes.

A key is ``fsk_<id>_<secret>``: ``id`` (8 hex digits) finds the record, ``secret`` (256 bits)
makes it unguessable. The keys file keeps the SHA-256 of each full key, never the key itself;
SHA-256 (not a slow password hash) fits because the secret is random and long, so there is
nothing to brute-force. Verification compares digests in constant time, and a verified key is
cached so the hot path pays a dict lookup, not a hash. The file is re-read when it changes
(checked at most once a second), so new and revoked keys take effect without a restart.
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

# moved to serving.config (snapshots need it, below the frontend); kept importable from here
from serving.config import default_keys_file as default_keys_file  # noqa: PLC0414
from serving.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)

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
    ) -> tuple[str, ApiKey]:
        """Creates a key; returns the token (shown once, never stored) and its record."""
        if not name:
            raise InvalidArgumentError("a key needs a name")
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
    """The verified caller of one request."""

    key: ApiKey
    #: id of the key's read scope registered in the Rust core
    scope_id: int
    read_all: bool = field(default=False)

    def require_admin(self) -> None:
        if not self.key.admin:
            raise PermissionDeniedError("this API key is not an admin key")

    def require_write(self, view: str) -> None:
        if ALL not in self.key.write and view not in self.key.write:
            raise PermissionDeniedError(f"this API key may not write feature view '{view}'")


class Authenticator:
    """Verifies ``Authorization: Bearer <key>`` headers against the keys file."""

    def __init__(self, keys_file: KeyFile, core: _rust_core.Store | _rust_core.RouterCore) -> None:
        self._file = keys_file
        self._core = core
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
            if cached.key.expired():
                self._verified.pop(token, None)
                raise self._fail("API key expired")
            self._used.add(cached.key.key_id)
            return cached
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
            raise self._fail("API key revoked")
        if rec.expired():
            raise self._fail("API key expired")
        scope_id = int(rec.key_id, 16)
        read_all = ALL in rec.read
        self._core.set_scope(scope_id, None if read_all else list(rec.read), list(rec.read))
        principal = Principal(rec, scope_id, read_all)
        self._verified[token] = principal
        self._used.add(rec.key_id)
        return principal

    def note_uses(self, now: float | None = None) -> None:
        """Stamps the keys used since the last call with ``now`` (off the request path)."""
        if self._used:
            at = time.time() if now is None else now
            used, self._used = self._used, set()
            for key_id in used:
                self.last_used[key_id] = at

    def _fail(self, message: str) -> UnauthenticatedError:
        self.failures += 1
        # Never log the key itself.
        log.warning("authentication failed: %s", message)
        return UnauthenticatedError(message)
