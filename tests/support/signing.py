"""Deliveries signed by code that is not ours: a bug in our verifier cannot hide behind
the same bug in a signer we wrote.

v1: the `standardwebhooks` package. JWT: PyJWT with `cryptography` RSA keys, the key set
served over loopback HTTP. v1a: `cryptography`'s ed25519 (no Standard Webhooks library
for Python signs v1a), its public key as `whpk_…` or as an OKP JWK in the same key set
(dynamic deliveries as they have been reported live).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from standardwebhooks import Webhook


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign_v1(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value, `v1,<base64>`, as the reference library makes it."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return Webhook(secret).sign(webhook_id, moment, body.decode())


def headers_v1(
    secret: str, body: bytes, webhook_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    webhook_id = webhook_id or "msg_" + secrets.token_hex(12)
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_v1(secret, webhook_id, timestamp, body),
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Ed25519Signer:
    private: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    kid: str = field(default_factory=lambda: "okp-" + secrets.token_hex(4))

    @property
    def public_key(self) -> str:
        raw = self.private.public_key().public_bytes_raw()
        return "whpk_" + base64.b64encode(raw).decode()

    def jwk(self) -> dict[str, Any]:
        """The public key as the key set at GEMINI_JWKS_URL publishes Ed25519 keys (RFC 8037)."""
        raw = self.private.public_key().public_bytes_raw()
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": self.kid, "use": "sig"}

    def sign(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        content = f"{webhook_id}.{timestamp}.".encode() + body
        return "v1a," + base64.b64encode(self.private.sign(content)).decode()


@dataclass
class RsaKey:
    kid: str = field(default_factory=lambda: "key-" + secrets.token_hex(4))
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key())
        )
        return jwk | {"kid": self.kid, "alg": "RS256", "use": "sig"}

    def token(self, claims: dict[str, Any], **header: Any) -> str:
        now = int(time.time())
        payload = {"iat": now, "exp": now + 300} | claims
        return jwt.encode(
            payload, self.private, algorithm="RS256", headers={"kid": self.kid} | header
        )


class Jwk(Protocol):
    def jwk(self) -> dict[str, Any]: ...


class JwksServer:
    """A key set on loopback HTTP; `keys` can change and `down` can fail it, mid-test."""

    def __init__(self, *keys: Jwk) -> None:
        self.keys: list[Jwk] = list(keys)
        self.down = False
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                if server.down:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": [key.jwk() for key in server.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
