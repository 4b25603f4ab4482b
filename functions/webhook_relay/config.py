"""Settings from the environment, validated once at start-up.

Every problem is a `ConfigError` naming its variable, so a bad deployment fails on its first
log line instead of answering each request with an error.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .errors import ConfigError
from .routing import DEFAULT_TOPIC_PREFIX, Routes, parse_routes, valid_topic_id
from .signing_secrets import SigningSecrets, parse_entries

DEFAULT_JWKS_URL = "https://generativelanguage.googleapis.com/.well-known/jwks.json"

# Every variable the function reads; infra/ may set only these (tests/test_infra.py checks).
ENVIRONMENT = (
    "WEBHOOK_SIGNING_SECRETS",
    "WEBHOOK_SIGNING_SECRET",
    "WEBHOOK_SIGNING_SECRETS_FILE",
    "WEBHOOK_PUBLIC_KEYS",
    "GEMINI_JWKS_URL",
    "GEMINI_JWT_AUDIENCE",
    "GEMINI_JWT_ISSUERS",
    "GEMINI_DYNAMIC_WEBHOOKS",
    "WEBHOOK_TOLERANCE_SECONDS",
    "WEBHOOK_MAX_BODY_BYTES",
    "GOOGLE_CLOUD_PROJECT",
    "GCP_PROJECT",
    "RELAY_TOPIC_PREFIX",
    "RELAY_ROUTES",
    "RELAY_DEDUP_COLLECTION",
    "RELAY_DEDUP_TTL_HOURS",
    "RELAY_CLAIM_LEASE_SECONDS",
    "RELAY_JOBS_COLLECTION",
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "THREADS",  # read by functions-framework: worker threads, set to the request concurrency
)

log = logging.getLogger(__name__)
_SEPARATORS = re.compile(r"[\s,]+")
# A quarantined body is published base64-encoded (4/3 of its size) in one Pub/Sub message,
# whose data may not exceed 10 MB: above 7 MiB (9.8 MB encoded) an authentic body that is not
# JSON could never be published, and would be answered 503 on every retry.
MAX_BODY_BYTES_LIMIT = 7 * 1_048_576
# The longest a request holds a claim (8 s budget + 1.5 s release, deadline.py, relay.py) plus
# margin for clock skew between instances.
MIN_CLAIM_LEASE_SECONDS = 15


def parse_public_keys(raw: str) -> tuple[Ed25519PublicKey, ...]:
    keys = []
    for position, token in enumerate(_tokens(raw), start=1):
        try:
            raw_key = base64.b64decode(token.removeprefix("whpk_"), validate=True)
            keys.append(Ed25519PublicKey.from_public_bytes(raw_key))
        except (binascii.Error, ValueError):
            raise ConfigError(
                "WEBHOOK_PUBLIC_KEYS",
                f"entry {position} is not whpk_ followed by a base64 ed25519 public key",
            ) from None
    return tuple(keys)


def _tokens(raw: str) -> list[str]:
    return [token for token in _SEPARATORS.split(raw) if token]


def _csv(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    secrets: SigningSecrets
    public_keys: tuple[Ed25519PublicKey, ...]
    jwks_url: str | None
    jwt_audiences: tuple[str, ...]  # empty: JWT deliveries are refused; ("*",): any audience
    jwt_issuers: tuple[str, ...]
    tolerance_seconds: int
    max_body_bytes: int
    project: str | None
    topic_prefix: str
    routes: Routes
    dedup_collection: str
    dedup_ttl_hours: int
    claim_lease_seconds: int
    warnings: tuple[str, ...] = field(default=())
    # `v1a` entries are also checked against the key set's Ed25519 keys (per-request webhooks).
    dynamic_webhooks: bool = False

    @property
    def any_audience(self) -> bool:
        return "*" in self.jwt_audiences


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    static = parse_entries(env.get("WEBHOOK_SIGNING_SECRETS", ""), "WEBHOOK_SIGNING_SECRETS")
    static += parse_entries(env.get("WEBHOOK_SIGNING_SECRET", ""), "WEBHOOK_SIGNING_SECRET")
    secrets_file = env.get("WEBHOOK_SIGNING_SECRETS_FILE", "").strip()
    secrets = SigningSecrets(static, Path(secrets_file) if secrets_file else None)
    public_keys = parse_public_keys(env.get("WEBHOOK_PUBLIC_KEYS", ""))

    jwks_url = _jwks_url(env.get("GEMINI_JWKS_URL", DEFAULT_JWKS_URL))
    audiences = _csv(env.get("GEMINI_JWT_AUDIENCE"))
    issuers = _csv(env.get("GEMINI_JWT_ISSUERS"))
    warnings = []
    if jwks_url and not audiences:
        warnings.append(
            "GEMINI_JWT_AUDIENCE is unset: JWT-signed (per-request) deliveries will get 401. "
            "Set it to this function's URL to accept them."
        )
    if jwks_url and "*" in audiences:
        warnings.append(
            "GEMINI_JWT_AUDIENCE is '*': any audience is accepted, so a token Google issued "
            "for another endpoint would be accepted here too."
        )
    dynamic = _flag(env, "GEMINI_DYNAMIC_WEBHOOKS")
    if dynamic and not jwks_url:
        raise ConfigError(
            "GEMINI_DYNAMIC_WEBHOOKS",
            "is true but GEMINI_JWKS_URL is empty: no key set to verify with",
        )
    if not (secrets.current() or public_keys or (jwks_url and audiences) or dynamic):
        raise ConfigError(
            "WEBHOOK_SIGNING_SECRETS",
            "no verification method: set WEBHOOK_SIGNING_SECRETS, WEBHOOK_SIGNING_SECRETS_FILE, "
            "WEBHOOK_PUBLIC_KEYS, GEMINI_DYNAMIC_WEBHOOKS=true, or GEMINI_JWT_AUDIENCE "
            "(with GEMINI_JWKS_URL)",
        )

    prefix = env.get("RELAY_TOPIC_PREFIX", DEFAULT_TOPIC_PREFIX)
    if prefix and not re.fullmatch(r"[A-Za-z][A-Za-z0-9\-_.~+%]*", prefix):
        raise ConfigError("RELAY_TOPIC_PREFIX", "must start a valid Pub/Sub topic id")
    routes = parse_routes(env.get("RELAY_ROUTES"), prefix)
    # The prefix makes the unrouted topic (and the default ones): a reserved ("goog") or
    # over-long result would fail every publish to it at request time instead of here.
    if not all(valid_topic_id(topic) for topic in routes.topics()):
        raise ConfigError("RELAY_TOPIC_PREFIX", "makes a topic id Pub/Sub does not allow")
    collection = env.get("RELAY_DEDUP_COLLECTION", "webhook_deliveries")
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,100}", collection) or collection.startswith("__"):
        raise ConfigError("RELAY_DEDUP_COLLECTION", "must be a plain Firestore collection id")

    return Settings(
        secrets=secrets,
        public_keys=public_keys,
        jwks_url=jwks_url,
        jwt_audiences=audiences,
        jwt_issuers=issuers,
        tolerance_seconds=_integer(env, "WEBHOOK_TOLERANCE_SECONDS", 300, 1, 86_400),
        max_body_bytes=_integer(env, "WEBHOOK_MAX_BODY_BYTES", 1_048_576, 1, MAX_BODY_BYTES_LIMIT),
        project=env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT") or None,
        topic_prefix=prefix,
        routes=routes,
        dedup_collection=collection,
        # Records must outlive Gemini's 24 h of retries, or a late retry is published twice.
        dedup_ttl_hours=_integer(env, "RELAY_DEDUP_TTL_HOURS", 72, 25, 24 * 365),
        # A claim is held up to the request budget plus the release budget; a shorter lease
        # would let a retry take over a claim whose publish is still running.
        claim_lease_seconds=_integer(
            env, "RELAY_CLAIM_LEASE_SECONDS", 30, MIN_CLAIM_LEASE_SECONDS, 3_600
        ),
        warnings=tuple(warnings),
        dynamic_webhooks=dynamic,
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower() or "false"
    if raw not in ("true", "false"):
        raise ConfigError(name, "must be true or false")
    return raw == "true"


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"\d+", raw) or not low <= int(raw) <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high}")
    return int(raw)


def _jwks_url(raw: str) -> str | None:
    url = raw.strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return url
    raise ConfigError("GEMINI_JWKS_URL", "must be an https URL (http only for loopback hosts)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
