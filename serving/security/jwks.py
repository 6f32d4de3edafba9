"""JSON Web Key Sets: the public keys tokens are verified with, from a file or an https URL.

Both sources pick up a rotation without a restart. A file is re-read when its modification time
changes (checked at most once a second, and only when a token is verified, never on a cached
token). A URL is fetched at start (failure is logged, not fatal: tokens are refused until a fetch
succeeds), again every ``refresh_seconds`` and early when a token names a key id the set does not
have (at most once per ``MIN_REFETCH_SECONDS``, so a stream of forged key ids cannot turn into a
stream of fetches). Fetches run on a worker thread: the event loop never waits for the issuer;
the token that found the unknown key id is refused and its retry finds the new key.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from serving.errors import InvalidArgumentError

log = logging.getLogger("serving.auth")

#: the earliest a URL key set is fetched again because a token named an unknown key id
MIN_REFETCH_SECONDS = 5.0
#: how often a file key set's modification time is looked at (on verification only)
FILE_CHECK_SECONDS = 1.0
FETCH_TIMEOUT_SECONDS = 5.0
#: a key set larger than this is refused (a JWKS holds a handful of keys)
MAX_JWKS_BYTES = 1 << 20


@dataclass(frozen=True)
class SigningKey:
    #: the public key object (``cryptography``) PyJWT verifies with
    key: Any
    #: the JWK's own ``alg`` (None: it names none)
    alg: str | None


def parse_jwks(raw: bytes, where: str) -> dict[str, SigningKey]:
    """Key id -> key of a JWKS document; keys without ``kid`` get ``""`` (one such key is
    usable by tokens without ``kid``); unusable keys (unknown ``kty``) are skipped with a log."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise InvalidArgumentError(f"JWKS {where}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise InvalidArgumentError(f'JWKS {where}: expected {{"keys": [...]}}')
    out: dict[str, SigningKey] = {}
    for i, k in enumerate(data["keys"]):
        if not isinstance(k, dict):
            raise InvalidArgumentError(f"JWKS {where}: keys[{i}] is not an object")
        if k.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(k)
        except (jwt.PyJWKError, jwt.InvalidKeyError) as e:
            log.warning("JWKS %s: keys[%d] (kid %r) skipped: %s", where, i, k.get("kid"), e)
            continue
        alg = k.get("alg")
        out[str(k.get("kid", ""))] = SigningKey(key.key, str(alg) if alg is not None else None)
    if not out:
        raise InvalidArgumentError(f"JWKS {where}: no usable signing key")
    return out


class JwksSource:
    """The current key set of one source; :meth:`get` finds a key by id."""

    def __init__(self, location: str, *, ca_file: str = "", refresh_seconds: float = 300.0):
        self.location = location
        self._is_url = location.startswith("https://")
        self._ca = ca_file
        self._refresh = max(refresh_seconds, MIN_REFETCH_SECONDS)
        self._keys: dict[str, SigningKey] = {}
        self._lock = threading.Lock()
        self._fetching = False
        self._mtime: float | None = None
        self._next_check = 0.0
        self._last_fetch = 0.0
        #: times the key set was (re)loaded, and why the last attempt failed (None: it worked)
        self.loads = 0
        self.last_error: str | None = None
        if self._is_url:
            self._fetch()
        else:
            self._read_file(force=True)

    def get(self, kid: str) -> SigningKey | None:
        """The key ``kid``, or None; may start a re-fetch (URL) or re-read (file)."""
        now = time.monotonic()
        if self._is_url:
            if now - self._last_fetch >= self._refresh:
                self._fetch_in_background()
            key = self._keys.get(kid)
            if key is None and now - self._last_fetch >= MIN_REFETCH_SECONDS:
                self._fetch_in_background()
            return key
        if now >= self._next_check:
            self._next_check = now + FILE_CHECK_SECONDS
            self._read_file()
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return sorted(self._keys)

    def _read_file(self, *, force: bool = False) -> None:
        path = Path(self.location)
        try:
            mtime = path.stat().st_mtime
            if mtime == self._mtime and not force:
                return
            keys = parse_jwks(path.read_bytes()[:MAX_JWKS_BYTES], f"file '{path}'")
        except (OSError, InvalidArgumentError) as e:
            msg = e.message if isinstance(e, InvalidArgumentError) else str(e)
            if force:
                raise InvalidArgumentError(f"cannot load the JWKS: {msg}") from None
            self.last_error = msg
            log.error("JWKS file %s not reloaded (the previous keys stay): %s", path, msg)
            return
        self._mtime, self._keys, self.last_error = mtime, keys, None
        self.loads += 1
        log.info("JWKS: %d key(s) from %s (kid %s)", len(keys), path, ", ".join(sorted(keys)))

    def _fetch_in_background(self) -> None:
        with self._lock:
            if self._fetching:
                return
            self._fetching = True
            self._last_fetch = time.monotonic()
        threading.Thread(target=self._fetch, name="jwks-fetch", daemon=True).start()

    def _fetch(self) -> None:
        self._last_fetch = time.monotonic()
        try:
            ctx = ssl.create_default_context(cafile=self._ca or None)
            req = urllib.request.Request(self.location, headers={"Accept": "application/json"})
            with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT_SECONDS, context=ctx) as r:
                raw = r.read(MAX_JWKS_BYTES + 1)
            if len(raw) > MAX_JWKS_BYTES:
                raise InvalidArgumentError(f"JWKS {self.location}: larger than {MAX_JWKS_BYTES}")
            keys = parse_jwks(raw, self.location)
        except (OSError, InvalidArgumentError) as e:
            self.last_error = e.message if isinstance(e, InvalidArgumentError) else str(e)
            log.error(
                "JWKS %s not fetched (%s); %s",
                self.location,
                self.last_error,
                "the previous keys stay" if self._keys else "tokens are refused until it is",
            )
        else:
            self._keys, self.last_error = keys, None
            self.loads += 1
            log.info("JWKS: %d key(s) from %s", len(keys), self.location)
        finally:
            with self._lock:
                self._fetching = False
