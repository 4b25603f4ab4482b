"""The key set that signs per-request (dynamic) deliveries, cached per instance.

It holds two kinds of keys, kept apart: RSA keys (by `kid`) verify RS256 JWTs, Ed25519 keys
(JWK `kty` `OKP`) verify Standard Webhooks `v1a` entries. Neither ever verifies the other form.

Google's samples fetch the key set on every request; that puts a network round trip and a
third party's availability on every delivery. Here the set is fetched once, kept, refreshed
when a token names a `kid` it does not hold (at most once per `refresh_interval`, so a flood
of made-up `kid`s cannot turn into a flood of fetches), and re-fetched when older than
`max_age` without failing requests if that re-fetch does not work.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from .errors import Unauthorized, Unavailable

FETCH_TIMEOUT_SECONDS = 3.0
REFRESH_INTERVAL_SECONDS = 30.0
MAX_AGE_SECONDS = 3600.0
MAX_KEY_SET_BYTES = 512 * 1024
# A `v1a` entry names no key, so each is tried: the bound on that work (Google publishes 3).
MAX_ED25519_KEYS = 8

log = logging.getLogger(__name__)

Fetch = Callable[[str, float], bytes]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead anywhere, https to http included: a 3xx is a failed fetch.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def fetch_url(url: str, timeout: float) -> bytes:
    """The key set's bytes, read within `timeout` seconds in all (not per socket read).

    Name resolution cannot be interrupted here; `KeySet` bounds the wait for it instead.
    """
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(  # noqa: S310 - config allows only https or loopback http
        url, headers={"Accept": "application/json", "User-Agent": "gemini-webhook-relay"}
    )
    body = bytearray()
    with _OPENER.open(request, timeout=timeout) as response:
        # read1: one socket read at a time, so a server trickling bytes meets the deadline.
        while chunk := response.read1(64 * 1024):
            body += chunk
            if len(body) > MAX_KEY_SET_BYTES:
                raise ValueError("key set larger than 512 KiB")
            if time.monotonic() > deadline:
                raise TimeoutError("key set fetch took too long")
    return bytes(body)


class _Fetch:
    """One fetch in a thread of its own, so that every waiter (the request that started it
    and any that joined) gives up at the same moment: `timeout` after it started."""

    def __init__(self, fetch: Fetch, url: str, timeout: float, install: Callable[[bytes], None]):
        self._deadline = time.monotonic() + timeout
        self._done = threading.Event()
        self.error: str | None = None

        def run() -> None:
            try:
                install(fetch(url, timeout))
            except Exception as exc:
                # OSError (URLError, HTTPError, timeouts), HTTPException (a truncated or garbled
                # answer), ValueError (not a key set): the set cannot be used, try later.
                self.error = f"key set unreachable ({type(exc).__name__})"
            finally:
                self._done.set()

        threading.Thread(target=run, name="jwks-fetch", daemon=True).start()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> Unavailable | None:
        """None once the new keys are installed; otherwise why they are not (a new error for
        each waiter: one exception object raised in several threads would share a traceback)."""
        if not self._done.wait(max(0.0, self._deadline - time.monotonic())):
            return Unavailable("key set unreachable (too slow)")
        return None if self.error is None else Unavailable(self.error)


@dataclass(frozen=True)
class Keys:
    rsa: Mapping[str, RSAPublicKey] = field(default_factory=dict)  # by `kid`, for RS256 JWTs
    ed25519: tuple[Ed25519PublicKey, ...] = ()  # for `v1a` entries; at most MAX_ED25519_KEYS


def parse_key_set(raw: bytes) -> Keys:
    """RSA signing keys by `kid` and Ed25519 keys; keys of other types or algorithms, or
    broken ones, are ignored, not fatal."""
    document = json.loads(raw)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    rsa: dict[str, RSAPublicKey] = {}
    ed25519: list[Ed25519PublicKey] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "RSA":
            kid = entry.get("kid")
            key = _rsa_key(entry) if isinstance(kid, str) else None
            if isinstance(kid, str) and key is not None:
                rsa[kid] = key
        elif entry.get("kty") == "OKP" and len(ed25519) < MAX_ED25519_KEYS:
            ed_key = _ed25519_key(entry)
            if ed_key is not None:
                ed25519.append(ed_key)
    return Keys(rsa, tuple(ed25519))


def _rsa_key(entry: dict[str, Any]) -> RSAPublicKey | None:
    if entry.get("alg", "RS256") != "RS256":
        return None
    try:
        key = jwt.PyJWK(entry, algorithm="RS256").key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    return key if isinstance(key, RSAPublicKey) else None


def _ed25519_key(entry: dict[str, Any]) -> Ed25519PublicKey | None:
    if entry.get("crv") != "Ed25519" or entry.get("alg", "EdDSA") not in ("EdDSA", "Ed25519"):
        return None
    x = entry.get("x")
    if not isinstance(x, str):
        return None
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:  # binascii.Error included; a wrong length too
        return None


class KeySet:
    def __init__(
        self,
        url: str,
        *,
        fetch: Fetch = fetch_url,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        refresh_interval: float = REFRESH_INTERVAL_SECONDS,
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._timeout = timeout
        self._refresh_interval = refresh_interval
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: Keys | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._pending: _Fetch | None = None
        self.fetches = 0

    def key_for(self, kid: str) -> RSAPublicKey:
        """The RSA key named `kid`.

        Raises `Unavailable` when the set is needed but cannot be fetched, and `Unauthorized`
        when the `kid` is unknown after a refresh, or a refresh was skipped by the rate limit.
        """
        keys = self._keys
        if keys is not None and kid in keys.rsa and not self._stale():
            return keys.rsa[kid]
        keys, error, refreshed = self._refresh()
        key = keys.rsa.get(kid)
        if key is not None:
            if error is not None:
                log.warning("key set refresh failed; keeping the cached keys")
            return key
        if error is not None:
            raise error
        if not refreshed:
            raise Unauthorized("unknown JWT key id (key set refreshed recently)")
        raise Unauthorized("unknown JWT key id")

    def ed25519_keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The Ed25519 keys held (fetched on first use, re-fetched when stale)."""
        keys = self._keys
        if keys is not None and not self._stale():
            return keys.ed25519
        keys, error, _ = self._refresh()
        if error is not None:
            log.warning("key set refresh failed; keeping the cached keys")
        return keys.ed25519

    def refreshed_ed25519_keys(self) -> tuple[Ed25519PublicKey, ...] | None:
        """After no held key verified a `v1a` entry: the keys of a refresh, under the same
        rate limit as an unknown `kid` (so a forged flood costs no more fetches), or None when
        the limit skipped it. `Unavailable` when the refresh could not reach the set."""
        keys, error, refreshed = self._refresh()
        if error is not None:
            raise error
        return keys.ed25519 if refreshed else None

    def _refresh(self) -> tuple[Keys, Unavailable | None, bool]:
        """The keys after joining or starting a fetch (if the rate limit allows one), why that
        fetch failed, and whether there was one."""
        fetch = self._join_or_start_fetch()
        error = fetch.wait() if fetch is not None else None
        keys = self._keys
        if keys is None:
            # Never fetched. A first fetch that failed moments ago is not retried for every
            # waiting request: the rate limit of refreshes applies, as every key is unknown.
            raise error or Unavailable("key set unreachable (retrying it shortly)")
        return keys, error, fetch is not None

    def _join_or_start_fetch(self) -> _Fetch | None:
        """The fetch in flight, else a new one, else None if the rate limit forbids it."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return self._pending
            last = self._attempted_at
            if last is not None and self._clock() - last < self._refresh_interval:
                return None
            self._attempted_at = self._clock()
            self.fetches += 1
            self._pending = _Fetch(self._fetch, self.url, self._timeout, self._install)
            return self._pending

    def _install(self, raw: bytes) -> None:
        keys = parse_key_set(raw)
        with self._lock:
            self._keys, self._fetched_at = keys, self._clock()

    def _stale(self) -> bool:
        return self._clock() - self._fetched_at > self._max_age


def unverified_header(token: str) -> Mapping[str, Any]:
    """The JOSE header, read only to pick the key: `jwt.decode` checks the whole token after.

    PyJWT's `get_unverified_header` decodes all three segments (21 µs a token here, over a
    quarter of a JWT verification); this reads the first (2 µs).
    """
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # binascii.Error and bad UTF-8 are ValueErrors
        header = None
    if not isinstance(header, dict):
        raise Unauthorized("JWT header is not readable")
    return header
