"""Is this delivery authentic? Decided on the raw bytes, before anything is parsed or stored.

The scheme follows from the shape of `webhook-signature`:
  `v1,<base64> …`   Standard Webhooks HMAC-SHA256 (project-level webhooks; any configured secret)
  `v1a,<base64> …`  Standard Webhooks ed25519 (any configured public key; with
                    GEMINI_DYNAMIC_WEBHOOKS, any Ed25519 key of the key set: per-request webhooks
                    as they have been seen live)
  `<jws>.<jws>.<jws>` an RS256 JWT from the configured key set (per-request webhooks, as
                    Google's guide documents them)
Every failure is a `BadRequest` (the request is malformed) or an `Unauthorized` (it is not
provably ours); the key set being unreachable is `Unavailable`.

Headers first: `check_head` decides all that the headers alone can (their form, the timestamp,
a JWT entirely), so such a request is refused before its body is read; `verify` then checks
what covers the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .config import Settings
from .errors import BadRequest, Unauthorized
from .jwks import KeySet, unverified_header

MAX_ID_BYTES = 1024  # a Pub/Sub attribute value's limit
MAX_SIGNATURE_ENTRIES = 32  # senders use one per live secret; more is an attack or a bug
# ed25519 costs ~60 µs a check against ~1 µs for HMAC: a sender signs with one key per live
# secret, so a few entries are plenty, and 32 forged ones times every key would be a CPU lever.
MAX_V1A_ENTRIES = 4
JWT_MAX_LEEWAY_SECONDS = 60
_TIMESTAMP = re.compile(r"-?[0-9]+")
# Far outside any tolerance, and short enough for int() (Python refuses over 4,300 digits).
_TIMESTAMP_DIGITS = 16
# The signature part may be empty: that is an unsecured (`alg: none`) JWS, which must be
# recognised as a JWT to be refused as one (401), not misread as a malformed v1 entry (400).
_JWS = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_SIGNATURE_LENGTHS = {"v1": 32, "v1a": 64}
DYNAMIC_OFF_HINT = (
    "a v1a signature did not verify and GEMINI_DYNAMIC_WEBHOOKS is off: per-request (dynamic) "
    "deliveries signed with the key set's Ed25519 keys are refused; set "
    "GEMINI_DYNAMIC_WEBHOOKS=true to accept them"
)


class Headers(Protocol):
    """Case-insensitive header lookup, as werkzeug's `Headers` does it."""

    def get(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class Head:
    """The `webhook-*` headers of one request. `signature` is raw: never log or return it."""

    webhook_id: str
    timestamp: int
    raw_timestamp: str
    signature: str = field(repr=False)

    def with_body(self, body: bytes) -> Delivery:
        return Delivery(self.webhook_id, self.timestamp, self.raw_timestamp, self.signature, body)


@dataclass(frozen=True)
class Delivery(Head):
    """One request as received: its headers and its raw body."""

    body: bytes = field(repr=False)

    def signed_content(self) -> bytes:
        return f"{self.webhook_id}.{self.raw_timestamp}.".encode() + self.body


def read_head(headers: Headers) -> Head:
    """The `webhook-*` headers, checked for presence and form (400 on any problem)."""
    webhook_id = _header(headers, "webhook-id")
    if len(webhook_id.encode()) > MAX_ID_BYTES:
        raise BadRequest(f"webhook-id is longer than {MAX_ID_BYTES} bytes")
    raw_timestamp = _header(headers, "webhook-timestamp")
    if not _TIMESTAMP.fullmatch(raw_timestamp):
        raise BadRequest("webhook-timestamp is not a decimal integer")
    signature = _header(headers, "webhook-signature")
    digits = raw_timestamp.lstrip("-")
    timestamp = int(raw_timestamp) if len(digits) <= _TIMESTAMP_DIGITS else 10**_TIMESTAMP_DIGITS
    if raw_timestamp.startswith("-"):
        timestamp = -abs(timestamp)
    return Head(webhook_id, timestamp, raw_timestamp, signature)


def read_delivery(headers: Headers, body: bytes) -> Delivery:
    return read_head(headers).with_body(body)


def header_text(headers: Headers, name: str) -> str | None:
    """A header as UTF-8 text: WSGI hands over header bytes as latin-1 code points."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8").strip()
    except UnicodeError:
        raise BadRequest(f"{name} is not UTF-8") from None


def _header(headers: Headers, name: str) -> str:
    value = header_text(headers, name)
    if not value:
        raise BadRequest(f"missing {name} header")
    return value


class Verifier:
    def __init__(
        self,
        settings: Settings,
        key_set: KeySet | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._key_set = key_set
        self._dynamic = key_set if settings.dynamic_webhooks else None
        self._clock = clock
        # Fixed by the settings: built once, not on every JWT delivery.
        required = ["aud"] if not settings.any_audience else []
        if settings.jwt_issuers:
            required.append("iss")
        self._jwt_checks: dict[str, Any] = {
            "algorithms": ["RS256"],
            "audience": None if settings.any_audience else list(settings.jwt_audiences),
            "issuer": list(settings.jwt_issuers) or None,
            "leeway": min(settings.tolerance_seconds, JWT_MAX_LEEWAY_SECONDS),
            # `iat` is judged by the tolerance window below, both ways; PyJWT would refuse an
            # `iat` later than now plus the (shorter) leeway.
            "options": {
                "verify_aud": not settings.any_audience,
                "verify_iat": False,
                "require": required,
            },
        }

    def check_head(self, head: Head) -> str | None:
        """What the headers alone decide, before the body is read: their form, the timestamp,
        and a JWT (which does not cover the body) entirely. The scheme when that proves the
        delivery authentic (`jwt`); None when the signature over the body remains to check."""
        if _JWS.fullmatch(head.signature):
            return self._jwt(head)
        self._entries(head)
        return None

    def verify(self, delivery: Delivery) -> str:
        """The scheme that proved `delivery` authentic: `hmac`, `ed25519`, `keyset-ed25519`
        or `jwt`."""
        if _JWS.fullmatch(delivery.signature):
            return self._jwt(delivery)
        return self._verify_entries(delivery, self._entries(delivery))

    def _jwt(self, head: Head) -> str:
        self._check_timestamp(head.timestamp, "webhook-timestamp")
        self._verify_jwt(head.signature)
        return "jwt"

    def _entries(self, head: Head) -> dict[str, list[bytes]]:
        # Parsed before the timestamp is checked: a header with no entry at all is 400.
        signatures = parse_signature_entries(head.signature)
        self._check_timestamp(head.timestamp, "webhook-timestamp")
        return signatures

    def _check_timestamp(self, timestamp: float, name: str) -> None:
        # Checked before any signature: a replayed old delivery costs no crypto.
        tolerance = self._settings.tolerance_seconds
        skew = self._clock() - timestamp
        if skew > tolerance:
            raise Unauthorized(f"{name} is too old")
        if skew < -tolerance:
            raise Unauthorized(f"{name} is too far in the future")

    def _verify_entries(self, delivery: Delivery, signatures: dict[str, list[bytes]]) -> str:
        content = delivery.signed_content()
        if signatures["v1"]:
            for secret in self._settings.secrets.current():
                expected = hmac.new(secret, content, hashlib.sha256).digest()
                # Check every entry, no early exit on a mismatch: timing says nothing.
                if any(hmac.compare_digest(expected, given) for given in signatures["v1"]):
                    return "hmac"
        v1a = signatures["v1a"][:MAX_V1A_ENTRIES]
        if _any_verifies(self._settings.public_keys, v1a, content):
            return "ed25519"
        if v1a and self._dynamic is not None:
            held = self._dynamic.ed25519_keys()
            if _any_verifies(held, v1a, content):
                return "keyset-ed25519"
            # Google may have rotated its keys since they were fetched.
            fresh = self._dynamic.refreshed_ed25519_keys()
            if fresh is not None:
                new = [key for key in fresh if key not in held]
                if _any_verifies(new, v1a, content):
                    return "keyset-ed25519"
        hint = DYNAMIC_OFF_HINT if v1a and self._dynamic is None else None
        raise Unauthorized("no signature matches", hint)

    def _verify_jwt(self, token: str) -> None:
        settings = self._settings
        if self._key_set is None:
            raise Unauthorized("JWT deliveries are disabled (GEMINI_JWKS_URL is empty)")
        if not settings.jwt_audiences:
            raise Unauthorized("JWT deliveries need GEMINI_JWT_AUDIENCE to be configured")
        header = unverified_header(token)
        # The algorithm is ours to choose, never the token's: no `none`, no HMAC keyed with
        # the public key, no EdDSA (the key set's Ed25519 keys are for `v1a` entries only).
        if header.get("alg") != "RS256":
            raise Unauthorized("JWT algorithm must be RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("JWT has no key id")
        key = self._key_set.key_for(kid)
        try:
            claims = jwt.decode(token, key, **self._jwt_checks)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized(f"JWT rejected: {_jwt_reason(exc)}") from None
        # A captured token replays no longer than a captured `webhook-timestamp` would.
        issued = claims.get("iat")
        if issued is not None:
            if not _finite_number(issued):
                raise Unauthorized("JWT rejected: malformed")
            self._check_timestamp(issued, "JWT iat")


def _finite_number(value: object) -> bool:
    # Not bool (an int to Python); not a huge int that float arithmetic cannot hold.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 10**_TIMESTAMP_DIGITS and math.isfinite(value)


def _any_verifies(
    keys: Iterable[Ed25519PublicKey], signatures: list[bytes], content: bytes
) -> bool:
    for key in keys:
        for given in signatures:
            try:
                key.verify(given, content)
            except InvalidSignature:
                continue
            return True
    return False


def claimed_scheme(signature: str | None) -> str:
    """The scheme a `webhook-signature` claims, for logs and metrics only: it proves nothing."""
    if not signature:
        return "none"
    if _JWS.fullmatch(signature.strip()):
        return "jwt"
    versions = {entry.partition(",")[0] for entry in signature.split()}
    return "hmac" if "v1" in versions else "ed25519" if "v1a" in versions else "unknown"


def parse_signature_entries(header: str) -> dict[str, list[bytes]]:
    """Decoded `v1` and `v1a` signatures.

    An entry that is well-formed (`version,value`) but cannot verify (unknown version, not
    base64, wrong length) is skipped, not fatal: it must never veto a valid entry beside it.
    Only a header with no well-formed entry at all is malformed (400).
    """
    entries = header.split()
    if len(entries) > MAX_SIGNATURE_ENTRIES:
        raise BadRequest(f"webhook-signature has more than {MAX_SIGNATURE_ENTRIES} entries")
    found: dict[str, list[bytes]] = {"v1": [], "v1a": []}
    well_formed = False
    for entry in entries:
        version, comma, value = entry.partition(",")
        if not comma or not version or not value or "," in value:
            continue
        well_formed = True
        if version not in found:
            continue
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(decoded) == _SIGNATURE_LENGTHS[version]:
            found[version].append(decoded)
    if not well_formed:
        raise BadRequest("webhook-signature has no '<version>,<base64>' entry")
    return found


def _jwt_reason(exc: Exception) -> str:
    # PyJWT's messages name the failed check, never a claim's value or the token.
    reasons = {
        jwt.ExpiredSignatureError: "expired",
        jwt.ImmatureSignatureError: "not yet valid",
        jwt.InvalidAudienceError: "wrong audience",
        jwt.InvalidIssuerError: "wrong issuer",
        jwt.MissingRequiredClaimError: "missing a required claim",
        jwt.InvalidSignatureError: "bad signature",
    }
    for kind, reason in reasons.items():
        if isinstance(exc, kind):
            return reason
    return "malformed"
