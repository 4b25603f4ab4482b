"""The CLI's signer against code that is not ours: `standardwebhooks` and PyJWT."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from standardwebhooks import Webhook

from tests.support.signing import new_secret as reference_secret
from webhook_relay.signing import (
    RsaSigner,
    SecretFormatError,
    new_secret,
    secret_key,
    sign_v1,
    signature_v1,
)


def test_v1_signature_is_the_reference_librarys() -> None:
    secret = reference_secret()
    body = b'{"type":"batch.succeeded","data":{"id":"batch_1"}}'
    moment = 1_767_225_600
    expected = Webhook(secret).sign("msg_1", datetime.fromtimestamp(moment, UTC), body.decode())
    assert sign_v1(secret_key(secret), "msg_1", moment, body) == expected


def test_reference_library_verifies_every_entry() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"video.generated"}'
    now = int(time.time())
    header = signature_v1([secret_key(old), secret_key(new)], "msg_2", now, body)
    assert len(header.split(" ")) == 2
    assert all(entry.startswith("v1,") for entry in header.split(" "))
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(now), "webhook-signature": header}
    for secret in (old, new):
        Webhook(secret).verify(body, headers)  # raises if no entry matches


def test_new_secret_is_whsec_and_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_!!!", "abc", "v1,abc", "whsec_a"])
def test_bad_secret_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(SecretFormatError) as raised:
        secret_key(bad)
    if bad not in ("", "whsec_"):  # the prefix itself is in the message, of course
        assert bad not in str(raised.value)


def test_signature_needs_a_key() -> None:
    with pytest.raises(ValueError, match="no secret"):
        signature_v1([], "msg", 1, b"")


def test_jwt_verifies_with_the_published_key(tmp_path: Path) -> None:
    signer = RsaSigner()
    token = signer.token("http://127.0.0.1:8080", now=int(time.time()))
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": signer.kid, "typ": "JWT"}
    [key] = jwt.PyJWKSet.from_json(signer.jwks().decode()).keys
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="http://127.0.0.1:8080")
    assert claims["exp"] - claims["iat"] == 300

    path = tmp_path / "key.pem"
    signer.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = RsaSigner.load(path, signer.kid)
    jwt.decode(again.token("aud"), key, algorithms=["RS256"], audience="aud")


def test_loading_something_else_than_a_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("not a key")
    with pytest.raises(ValueError):  # noqa: PT011 - cryptography's message varies
        RsaSigner.load(path, "kid")
