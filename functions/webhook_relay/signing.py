"""Signing deliveries the way Gemini does: for `webhook-relay send` and `webhook-relay dev`.

Static (project-level) webhooks: Standard Webhooks `v1`, HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}` keyed with the base64 decoding of what follows
`whsec_`; one `v1,<base64>` entry per live secret, separated by spaces (during a rotation
Gemini signs with the old and the new secret).

Dynamic (per-request) webhooks: a whole RS256 JWT in `webhook-signature`, `kid` in its header,
verified against a JWKS. Which claims Google puts in it is not documented; this signer sets
`aud` (the receiver's URL), `iat` and `exp`, which is what the relay checks.

The relay's own verifier does not use this module, and the tests check this signer against
the reference `standardwebhooks` library, so a shared bug cannot hide on both sides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
JWT_LIFETIME_SECONDS = 300


class SecretFormatError(ValueError):
    """A webhook secret that is not `whsec_` followed by base64. Never carries the value."""


def new_secret() -> str:
    """A fresh secret in Gemini's format: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_…` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise SecretFormatError("a webhook secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise SecretFormatError("a webhook secret must be whsec_ followed by base64")
    return key


def sign_v1(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature entry."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_v1(keys: Iterable[bytes], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one entry per key, space-separated."""
    entries = [sign_v1(key, webhook_id, timestamp, body) for key in keys]
    if not entries:
        raise ValueError("no secret to sign with")
    return " ".join(entries)


@dataclass(frozen=True)
class RsaSigner:
    """An RS256 key pair with a key id: signs JWT deliveries and publishes its JWKS."""

    kid: str = field(default_factory=lambda: "dev-" + secrets.token_hex(4))
    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        repr=False,
    )

    @classmethod
    def load(cls, path: Path, kid: str) -> RsaSigner:
        """A key written by `save`; `ValueError` if the file is not an RSA private key."""
        key = load_private_key(path)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return cls(kid, key)

    def save(self, path: Path) -> None:
        save_private_key(self.private_key, path)

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key())
        )
        return public | {"kid": self.kid, "alg": "RS256", "use": "sig"}

    def jwks(self) -> bytes:
        return json.dumps({"keys": [self.jwk()]}).encode()

    def token(
        self,
        audience: str,
        now: int | None = None,
        lifetime: int = JWT_LIFETIME_SECONDS,
        **claims: Any,
    ) -> str:
        """A JWT for one delivery attempt: `aud`, `iat`, `exp` (and any extra claims)."""
        issued = int(time.time()) if now is None else now
        payload = {"aud": audience, "iat": issued, "exp": issued + lifetime} | claims
        return jwt.encode(payload, self.private_key, algorithm="RS256", headers={"kid": self.kid})


@dataclass(frozen=True)
class Ed25519DevKey:
    """The dev key set's Ed25519 (JWK `OKP`) key: signs `v1a` entries over
    `{webhook-id}.{webhook-timestamp}.{body}`, as live dynamic deliveries are signed."""

    private_key: ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls) -> Ed25519DevKey:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> Ed25519DevKey:
        """A key written by `save`; `ValueError` if the file is not an Ed25519 private key."""
        key = load_private_key(path)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    def save(self, path: Path) -> None:
        save_private_key(self.private_key, path)

    @property
    def kid(self) -> str:
        # Derived from the key, so the file alone is enough to name it.
        return "dev-okp-" + hashlib.sha256(self._public()).hexdigest()[:8]

    def jwk(self) -> dict[str, Any]:
        x = base64.urlsafe_b64encode(self._public()).rstrip(b"=").decode("ascii")
        return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "use": "sig"}

    def sign(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        content = f"{webhook_id}.{timestamp}.".encode() + body
        return "v1a," + base64.b64encode(self.private_key.sign(content)).decode("ascii")

    def _public(self) -> bytes:
        return self.private_key.public_key().public_bytes_raw()


def save_private_key(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, path: Path) -> None:
    """The private key as unencrypted PKCS#8 PEM, readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(pem)


def load_private_key(path: Path) -> object:
    """What `save_private_key` wrote; `ValueError` if the file holds no PEM private key."""
    return serialization.load_pem_private_key(path.read_bytes(), password=None)
