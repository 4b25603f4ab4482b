"""Verification on the raw bytes: each test is one way a delivery must be refused (or not).

Deliveries are signed by code that is not ours (tests/support/signing.py); the verifier runs
on real settings and a real key set on loopback HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from werkzeug.datastructures import Headers

from tests.support.fakes import FakeClock, jwks_server, rsa_key
from tests.support.signing import (
    Ed25519Signer,
    JwksServer,
    RsaKey,
    headers_v1,
    new_secret,
)
from webhook_relay.config import load_settings
from webhook_relay.errors import BadRequest, Unauthorized, Unavailable
from webhook_relay.jwks import KeySet
from webhook_relay.verify import (
    DYNAMIC_OFF_HINT,
    MAX_V1A_ENTRIES,
    Verifier,
    read_delivery,
    read_head,
)

SECRET = new_secret()
OTHER_SECRET = new_secret()
AUDIENCE = "https://relay.example/webhook"
BODY = b'{"type":"batch.succeeded","data":{"id":"batch_123456"}}'

Verify = Callable[[Mapping[str, str], bytes], str]


def make_verifier(env: Mapping[str, str], clock: FakeClock | None = None) -> Verify:
    settings = load_settings(env)
    key_set = KeySet(settings.jwks_url, clock=clock or FakeClock()) if settings.jwks_url else None
    verifier = Verifier(settings, key_set)

    def verify(headers: Mapping[str, str], body: bytes) -> str:
        return verifier.verify(read_delivery(Headers(dict(headers)), body))

    return verify


@pytest.fixture
def verify() -> Verify:
    return make_verifier({"WEBHOOK_SIGNING_SECRETS": SECRET, "GEMINI_JWKS_URL": ""})


def with_signature(headers: Mapping[str, str], signature: str) -> dict[str, str]:
    return dict(headers) | {"webhook-signature": signature}


def random_v1_entry() -> str:
    return "v1," + base64.b64encode(os.urandom(32)).decode()


# --- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_bad_request(verify: Verify, name: str) -> None:
    headers = headers_v1(SECRET, BODY)
    del headers[name]
    with pytest.raises(BadRequest, match=name):
        verify(headers, BODY)


@pytest.mark.parametrize("timestamp", ["12.5", "1e9", "0x10", "1 2", "+1", "٣٣٣"])
def test_timestamp_not_a_decimal_integer_is_bad_request(verify: Verify, timestamp: str) -> None:
    headers = headers_v1(SECRET, BODY) | {"webhook-timestamp": timestamp}
    with pytest.raises(BadRequest, match="webhook-timestamp"):
        verify(headers, BODY)


# --- v1 (HMAC) -----------------------------------------------------------------------------


def test_v1_signed_by_standardwebhooks_is_accepted(verify: Verify) -> None:
    assert verify(headers_v1(SECRET, BODY), BODY) == "hmac"


def test_v1_wrong_secret(verify: Verify) -> None:
    with pytest.raises(Unauthorized):
        verify(headers_v1(OTHER_SECRET, BODY), BODY)


def test_v1_one_flipped_body_byte(verify: Verify) -> None:
    headers = headers_v1(SECRET, BODY)
    tampered = bytearray(BODY)
    tampered[10] ^= 0x01
    with pytest.raises(Unauthorized):
        verify(headers, bytes(tampered))


def test_v1_altered_id(verify: Verify) -> None:
    headers = headers_v1(SECRET, BODY, webhook_id="msg_1") | {"webhook-id": "msg_2"}
    with pytest.raises(Unauthorized):
        verify(headers, BODY)


def test_v1_altered_timestamp(verify: Verify) -> None:
    now = int(time.time())
    headers = headers_v1(SECRET, BODY, timestamp=now) | {"webhook-timestamp": str(now + 1)}
    with pytest.raises(Unauthorized):
        verify(headers, BODY)


def test_v1_timestamp_too_old(verify: Verify) -> None:
    with pytest.raises(Unauthorized, match="too old"):
        verify(headers_v1(SECRET, BODY, timestamp=int(time.time()) - 400), BODY)


def test_v1_timestamp_too_new(verify: Verify) -> None:
    with pytest.raises(Unauthorized, match="future"):
        verify(headers_v1(SECRET, BODY, timestamp=int(time.time()) + 400), BODY)


def test_v1_tolerance_is_configurable() -> None:
    verify = make_verifier(
        {
            "WEBHOOK_SIGNING_SECRETS": SECRET,
            "GEMINI_JWKS_URL": "",
            "WEBHOOK_TOLERANCE_SECONDS": "30",
        }
    )
    with pytest.raises(Unauthorized):
        verify(headers_v1(SECRET, BODY, timestamp=int(time.time()) - 60), BODY)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("v1", id="no-comma"),
        pytest.param("v1,a,b", id="two-commas"),
        pytest.param(",abc", id="no-version"),
        pytest.param("v1,", id="no-value"),
        pytest.param(" ".join([random_v1_entry()] * 5000), id="thousands-of-entries"),
    ],
)
def test_v1_malformed_signature_header_is_bad_request(verify: Verify, signature: str) -> None:
    with pytest.raises(BadRequest, match="webhook-signature"):
        verify(with_signature(headers_v1(SECRET, BODY), signature), BODY)


@pytest.mark.parametrize("signature", ["", "   "])
def test_v1_empty_signature_header_is_bad_request(verify: Verify, signature: str) -> None:
    with pytest.raises(BadRequest, match="missing webhook-signature"):
        verify(with_signature(headers_v1(SECRET, BODY), signature), BODY)


def test_v1_rotation_non_matching_entry_then_matching_entry(verify: Verify) -> None:
    headers = headers_v1(SECRET, BODY)
    signature = f"{random_v1_entry()} {headers['webhook-signature']}"
    assert verify(with_signature(headers, signature), BODY) == "hmac"


def test_v1_second_of_two_configured_secrets() -> None:
    verify = make_verifier(
        {"WEBHOOK_SIGNING_SECRETS": f"{OTHER_SECRET},{SECRET}", "GEMINI_JWKS_URL": ""}
    )
    assert verify(headers_v1(SECRET, BODY), BODY) == "hmac"


def test_v1_unknown_version_beside_a_good_entry(verify: Verify) -> None:
    headers = headers_v1(SECRET, BODY)
    signature = f"v2,{base64.b64encode(b'future').decode()} {headers['webhook-signature']}"
    assert verify(with_signature(headers, signature), BODY) == "hmac"


def test_only_unknown_versions_is_unauthorized(verify: Verify) -> None:
    signature = "v2,AAAA v9,BBBB"
    with pytest.raises(Unauthorized, match="no signature matches"):
        verify(with_signature(headers_v1(SECRET, BODY), signature), BODY)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("v1,not-base64!", id="bad-base64"),
        pytest.param("v1," + base64.b64encode(b"x" * 31).decode(), id="wrong-length"),
        pytest.param("v1a," + base64.b64encode(b"x" * 64).decode(), id="v1a-without-keys"),
        pytest.param("v9,AAAA", id="unknown-version"),
    ],
)
def test_well_formed_entry_that_cannot_verify_is_unauthorized(verify: Verify, entry: str) -> None:
    with pytest.raises(Unauthorized):
        verify(with_signature(headers_v1(SECRET, BODY), entry), BODY)


@pytest.mark.parametrize(
    "bad",
    ["v1,not-base64!", "v1," + base64.b64encode(b"x" * 31).decode(), "junk", "v1a,AAAA"],
)
@pytest.mark.parametrize("valid_first", [True, False])
def test_bad_entry_never_vetoes_a_valid_one(verify: Verify, bad: str, valid_first: bool) -> None:
    headers = headers_v1(SECRET, BODY)
    entries = [headers["webhook-signature"], bad]
    signature = " ".join(entries if valid_first else reversed(entries))
    assert verify(with_signature(headers, signature), BODY) == "hmac"


@pytest.mark.parametrize("digits", [16, 40, 5000])
def test_timestamp_of_any_length_outside_the_tolerance_is_unauthorized(
    verify: Verify, digits: int
) -> None:
    for timestamp in ("9" * digits, "-" + "9" * digits):
        headers = headers_v1(SECRET, BODY) | {"webhook-timestamp": timestamp}
        with pytest.raises(Unauthorized, match="webhook-timestamp"):
            verify(headers, BODY)


def test_delivery_repr_holds_no_signature_or_body() -> None:
    headers = headers_v1(SECRET, BODY)
    shown = repr(read_delivery(Headers(headers), BODY))
    assert headers["webhook-signature"].split(",", 1)[1] not in shown
    assert "batch_123456" not in shown


def test_v1_secret_without_base64_padding_as_the_reference_library_accepts() -> None:
    unpadded = SECRET.rstrip("=")
    assert unpadded != SECRET
    verify = make_verifier({"WEBHOOK_SIGNING_SECRETS": unpadded, "GEMINI_JWKS_URL": ""})
    assert verify(headers_v1(unpadded, BODY), BODY) == "hmac"


def test_v1_secret_from_rewritten_secrets_file_is_used(tmp_path: Path) -> None:
    # A rotation through the Secret Manager volume needs no redeploy.
    path = tmp_path / "secrets"
    path.write_text(OTHER_SECRET)
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS_FILE": str(path), "GEMINI_JWKS_URL": ""})
    verifier = Verifier(settings, None)
    headers = Headers(headers_v1(SECRET, BODY))
    with pytest.raises(Unauthorized):
        verifier.verify(read_delivery(headers, BODY))
    path.write_text(f"{OTHER_SECRET} {SECRET}")
    os.utime(path, ns=(time.time_ns() + 5_000_000_000, time.time_ns() + 5_000_000_000))
    settings.secrets.refresh()  # one check of the refresher thread
    assert verifier.verify(read_delivery(headers, BODY)) == "hmac"


# --- v1a (ed25519) -------------------------------------------------------------------------


def v1a_headers(signer: Ed25519Signer, body: bytes) -> dict[str, str]:
    now = int(time.time())
    return {
        "webhook-id": "msg_v1a",
        "webhook-timestamp": str(now),
        "webhook-signature": signer.sign("msg_v1a", now, body),
    }


def test_v1a_signed_with_ed25519_is_accepted() -> None:
    signer = Ed25519Signer()
    verify = make_verifier({"WEBHOOK_PUBLIC_KEYS": signer.public_key, "GEMINI_JWKS_URL": ""})
    assert verify(v1a_headers(signer, BODY), BODY) == "ed25519"


def test_v1a_wrong_key() -> None:
    verify = make_verifier(
        {"WEBHOOK_PUBLIC_KEYS": Ed25519Signer().public_key, "GEMINI_JWKS_URL": ""}
    )
    with pytest.raises(Unauthorized):
        verify(v1a_headers(Ed25519Signer(), BODY), BODY)


def test_v1a_work_is_capped_per_request() -> None:
    # Forged entries first, the genuine one past the cap: ed25519 checks are ~60 µs each, so
    # a header of 32 entries against every key would be a lever on the instance's CPU.
    signer = Ed25519Signer()
    keys = ",".join([signer.public_key, Ed25519Signer().public_key, Ed25519Signer().public_key])
    verify = make_verifier({"WEBHOOK_PUBLIC_KEYS": keys, "GEMINI_JWKS_URL": ""})
    headers = v1a_headers(signer, BODY)
    forged = "v1a," + base64.b64encode(os.urandom(64)).decode()
    within = " ".join([forged] * (MAX_V1A_ENTRIES - 1) + [headers["webhook-signature"]])
    assert verify(with_signature(headers, within), BODY) == "ed25519"
    beyond = " ".join([forged] * MAX_V1A_ENTRIES + [headers["webhook-signature"]])
    with pytest.raises(Unauthorized):
        verify(with_signature(headers, beyond), BODY)


def test_v1a_entry_is_not_checked_against_hmac_secrets(verify: Verify) -> None:
    with pytest.raises(Unauthorized):
        verify(v1a_headers(Ed25519Signer(), BODY), BODY)


# --- JWT (RS256 against the key set) -------------------------------------------------------


KEY = rsa_key("a")
ROTATED = rsa_key("b")


@pytest.fixture
def server() -> JwksServer:
    return jwks_server(KEY)


def jwt_env(server: JwksServer, **extra: str) -> dict[str, str]:
    return {"GEMINI_JWKS_URL": server.url, "GEMINI_JWT_AUDIENCE": AUDIENCE} | extra


def jwt_headers(token: str, timestamp: int | None = None) -> dict[str, str]:
    return {
        "webhook-id": "msg_jwt",
        "webhook-timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "webhook-signature": token,
    }


def good_token(key: RsaKey = KEY, **claims: Any) -> str:
    return key.token({"aud": AUDIENCE, "iss": "https://accounts.google.com"} | claims)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_jwt_rs256_is_accepted(server: JwksServer) -> None:
    assert make_verifier(jwt_env(server))(jwt_headers(good_token()), BODY) == "jwt"


def test_jwt_alg_none(server: JwksServer) -> None:
    token = jwt.encode({"aud": AUDIENCE}, "", algorithm="none", headers={"kid": KEY.kid})
    with pytest.raises(Unauthorized):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


def test_jwt_hs256_keyed_with_the_rsa_public_key_pem(server: JwksServer) -> None:
    # The classic algorithm confusion: PyJWT refuses to make this token, so it is made by hand.
    pem = KEY.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KEY.kid}).encode())
    now = int(time.time())
    payload = b64url(json.dumps({"aud": AUDIENCE, "iat": now, "exp": now + 300}).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthorized):
        make_verifier(jwt_env(server))(jwt_headers(f"{header}.{payload}.{b64url(mac)}"), BODY)


def test_jwt_unknown_kid_refreshes_once_then_is_unauthorized(server: JwksServer) -> None:
    clock = FakeClock()
    verify = make_verifier(jwt_env(server), clock)
    verify(jwt_headers(good_token()), BODY)  # the set is now cached
    clock.advance(30)
    server.requests = 0
    with pytest.raises(Unauthorized, match="unknown JWT key id"):
        verify(jwt_headers(good_token(ROTATED)), BODY)
    assert server.requests == 1


def test_jwt_second_unknown_kid_within_30s_does_not_fetch(server: JwksServer) -> None:
    clock = FakeClock()
    verify = make_verifier(jwt_env(server), clock)
    with pytest.raises(Unauthorized):
        verify(jwt_headers(good_token(ROTATED)), BODY)
    clock.advance(29)
    server.requests = 0
    with pytest.raises(Unauthorized, match="refreshed recently"):
        verify(jwt_headers(good_token(rsa_key("c"))), BODY)
    assert server.requests == 0


def test_jwt_key_rotated_into_the_set_after_caching_is_accepted(server: JwksServer) -> None:
    clock = FakeClock()
    verify = make_verifier(jwt_env(server), clock)
    verify(jwt_headers(good_token()), BODY)
    server.keys = [KEY, ROTATED]
    clock.advance(30)
    assert verify(jwt_headers(good_token(ROTATED)), BODY) == "jwt"


def test_jwt_expired(server: JwksServer) -> None:
    token = good_token(exp=int(time.time()) - 400)
    with pytest.raises(Unauthorized, match="expired"):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


def test_jwt_expired_within_the_leeway_is_accepted(server: JwksServer) -> None:
    token = good_token(exp=int(time.time()) - 30)
    assert make_verifier(jwt_env(server))(jwt_headers(token), BODY) == "jwt"


def test_jwt_leeway_is_at_most_60_seconds_whatever_the_tolerance(server: JwksServer) -> None:
    token = good_token(exp=int(time.time()) - 120)  # within the 300 s tolerance
    with pytest.raises(Unauthorized, match="expired"):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


@pytest.mark.parametrize("offset", [-400, 400])
def test_jwt_issued_outside_the_tolerance_is_refused(server: JwksServer, offset: int) -> None:
    # A captured token replays no longer than a captured webhook-timestamp would.
    now = int(time.time())
    token = good_token(iat=now + offset, exp=now + 3600)
    with pytest.raises(Unauthorized):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


def test_jwt_issued_within_the_tolerance_is_accepted(server: JwksServer) -> None:
    now = int(time.time())
    token = good_token(iat=now - 200, exp=now + 3600)
    assert make_verifier(jwt_env(server))(jwt_headers(token), BODY) == "jwt"


@pytest.mark.parametrize("offset", [290, -290])
def test_jwt_iat_is_judged_by_the_tolerance_both_ways_not_by_the_leeway(
    server: JwksServer, offset: int
) -> None:
    # PyJWT alone refuses an `iat` later than now plus its leeway (60 s here): "not yet valid".
    now = int(time.time())
    token = good_token(iat=now + offset, exp=now + 3600)
    assert make_verifier(jwt_env(server))(jwt_headers(token), BODY) == "jwt"


@pytest.mark.parametrize(("offset", "reason"), [(310, "too far in the future"), (-310, "too old")])
def test_jwt_iat_just_outside_the_tolerance_is_refused(
    server: JwksServer, offset: int, reason: str
) -> None:
    now = int(time.time())
    token = good_token(iat=now + offset, exp=now + 3600)
    with pytest.raises(Unauthorized, match=f"JWT iat is {reason}"):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


@pytest.mark.parametrize("iat", ["1700000000", True, 10**400, 1e309])
def test_jwt_iat_that_is_not_a_plain_number_is_refused(server: JwksServer, iat: Any) -> None:
    with pytest.raises(Unauthorized, match="JWT rejected"):
        make_verifier(jwt_env(server))(jwt_headers(good_token(iat=iat)), BODY)


def test_jwt_nbf_keeps_its_leeway_of_at_most_60_seconds(server: JwksServer) -> None:
    now = int(time.time())
    assert make_verifier(jwt_env(server))(jwt_headers(good_token(nbf=now + 30)), BODY) == "jwt"
    with pytest.raises(Unauthorized, match="not yet valid"):
        make_verifier(jwt_env(server))(jwt_headers(good_token(nbf=now + 120)), BODY)


def test_jwt_not_yet_valid(server: JwksServer) -> None:
    token = good_token(nbf=int(time.time()) + 400)
    with pytest.raises(Unauthorized, match="not yet valid"):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


def test_jwt_wrong_audience(server: JwksServer) -> None:
    token = good_token(aud="https://someone-else.example/hook")
    with pytest.raises(Unauthorized, match="audience"):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


def test_jwt_missing_audience_claim(server: JwksServer) -> None:
    token = KEY.token({})
    with pytest.raises(Unauthorized, match="missing a required claim"):
        make_verifier(jwt_env(server))(jwt_headers(token), BODY)


def test_jwt_one_of_several_configured_audiences(server: JwksServer) -> None:
    verify = make_verifier(jwt_env(server, GEMINI_JWT_AUDIENCE=f"https://a.example, {AUDIENCE}"))
    assert verify(jwt_headers(good_token()), BODY) == "jwt"


def test_jwt_no_audience_configured(server: JwksServer) -> None:
    verify = make_verifier({"GEMINI_JWKS_URL": server.url, "WEBHOOK_SIGNING_SECRETS": SECRET})
    with pytest.raises(Unauthorized, match="GEMINI_JWT_AUDIENCE"):
        verify(jwt_headers(good_token()), BODY)


def test_jwt_star_audience_accepts_any(server: JwksServer) -> None:
    verify = make_verifier(jwt_env(server, GEMINI_JWT_AUDIENCE="*"))
    assert verify(jwt_headers(good_token(aud="https://anyone.example")), BODY) == "jwt"


def test_jwt_issuers_configured_and_iss_missing(server: JwksServer) -> None:
    verify = make_verifier(jwt_env(server, GEMINI_JWT_ISSUERS="https://accounts.google.com"))
    with pytest.raises(Unauthorized):
        verify(jwt_headers(KEY.token({"aud": AUDIENCE})), BODY)


def test_jwt_issuer_not_configured(server: JwksServer) -> None:
    verify = make_verifier(
        jwt_env(server, GEMINI_JWT_ISSUERS="https://a.example,https://b.example")
    )
    with pytest.raises(Unauthorized, match="wrong issuer"):
        verify(jwt_headers(good_token()), BODY)


def test_jwt_second_of_two_configured_issuers(server: JwksServer) -> None:
    verify = make_verifier(
        jwt_env(server, GEMINI_JWT_ISSUERS="https://a.example, https://accounts.google.com")
    )
    assert verify(jwt_headers(good_token()), BODY) == "jwt"


def test_jwt_key_set_down_at_first_use_is_unavailable(server: JwksServer) -> None:
    server.down = True
    with pytest.raises(Unavailable):
        make_verifier(jwt_env(server))(jwt_headers(good_token()), BODY)


def test_jwt_key_set_down_on_refresh_for_unknown_kid_is_unavailable(server: JwksServer) -> None:
    clock = FakeClock()
    verify = make_verifier(jwt_env(server), clock)
    verify(jwt_headers(good_token()), BODY)
    server.down = True
    clock.advance(30)
    with pytest.raises(Unavailable):
        verify(jwt_headers(good_token(ROTATED)), BODY)


def test_jwt_cached_key_keeps_working_while_the_set_is_down(server: JwksServer) -> None:
    clock = FakeClock()
    verify = make_verifier(jwt_env(server), clock)
    verify(jwt_headers(good_token()), BODY)
    server.down = True
    clock.advance(2 * 3600)  # even once the cache is due for a refresh
    assert verify(jwt_headers(good_token()), BODY) == "jwt"


def test_jwt_good_signature_but_timestamp_header_outside_tolerance(server: JwksServer) -> None:
    headers = jwt_headers(good_token(), timestamp=int(time.time()) - 400)
    with pytest.raises(Unauthorized, match="webhook-timestamp"):
        make_verifier(jwt_env(server))(headers, BODY)


def test_jwt_key_named_by_a_url_in_the_token_is_never_fetched(server: JwksServer) -> None:
    attacker = RsaKey(kid="attacker")
    elsewhere = JwksServer(attacker)
    with elsewhere.running():
        token = attacker.token({"aud": AUDIENCE}, jku=elsewhere.url, x5u=elsewhere.url)
        with pytest.raises(Unauthorized):
            make_verifier(jwt_env(server))(jwt_headers(token), BODY)
        assert elsewhere.requests == 0


def test_jwt_own_kid_but_another_key(server: JwksServer) -> None:
    forged = RsaKey(kid=KEY.kid)
    with pytest.raises(Unauthorized, match="bad signature"):
        make_verifier(jwt_env(server))(jwt_headers(good_token(forged)), BODY)


def test_jwt_disabled_when_jwks_url_is_empty() -> None:
    verify = make_verifier({"WEBHOOK_SIGNING_SECRETS": SECRET, "GEMINI_JWKS_URL": ""})
    with pytest.raises(Unauthorized, match="disabled"):
        verify(jwt_headers(good_token()), BODY)


# --- v1a from the key set (dynamic deliveries as reported live) ------------------------------


GOOGLE = Ed25519Signer()  # one of the key set's Ed25519 keys


def dynamic_env(server: JwksServer, **extra: str) -> dict[str, str]:
    return {"GEMINI_JWKS_URL": server.url, "GEMINI_DYNAMIC_WEBHOOKS": "true"} | extra


def test_dynamic_v1a_signed_with_a_key_set_key_is_accepted() -> None:
    server = jwks_server(KEY, Ed25519Signer(), GOOGLE)  # RSA and Ed25519 keys side by side
    verify = make_verifier(dynamic_env(server))
    assert verify(v1a_headers(GOOGLE, BODY), BODY) == "keyset-ed25519"
    assert server.requests == 1


def test_dynamic_v1a_configured_public_key_stays_ed25519() -> None:
    own = Ed25519Signer()
    verify = make_verifier(dynamic_env(jwks_server(GOOGLE), WEBHOOK_PUBLIC_KEYS=own.public_key))
    assert verify(v1a_headers(own, BODY), BODY) == "ed25519"
    assert verify(v1a_headers(GOOGLE, BODY), BODY) == "keyset-ed25519"


def test_dynamic_v1a_foreign_key_is_unauthorized() -> None:
    verify = make_verifier(dynamic_env(jwks_server(GOOGLE)))
    with pytest.raises(Unauthorized, match="no signature matches") as refused:
        verify(v1a_headers(Ed25519Signer(), BODY), BODY)
    assert refused.value.hint is None  # dynamic deliveries are on: nothing to switch


def test_dynamic_v1a_body_changed_is_unauthorized() -> None:
    verify = make_verifier(dynamic_env(jwks_server(GOOGLE)))
    with pytest.raises(Unauthorized):
        verify(v1a_headers(GOOGLE, BODY), BODY.replace(b"batch_123456", b"batch_999999"))


def test_dynamic_v1a_stale_timestamp_is_refused_before_the_key_set_is_fetched() -> None:
    server = jwks_server(GOOGLE)
    stale = int(time.time()) - 400
    headers = v1a_headers(GOOGLE, BODY) | {
        "webhook-timestamp": str(stale),
        "webhook-signature": GOOGLE.sign("msg_v1a", stale, BODY),
    }
    with pytest.raises(Unauthorized, match="too old"):
        make_verifier(dynamic_env(server))(headers, BODY)
    assert server.requests == 0


def test_dynamic_v1a_is_off_by_default_and_the_refusal_says_so() -> None:
    server = jwks_server(GOOGLE)
    verify = make_verifier({"GEMINI_JWKS_URL": server.url, "WEBHOOK_SIGNING_SECRETS": SECRET})
    with pytest.raises(Unauthorized, match=r"^no signature matches$") as refused:
        verify(v1a_headers(GOOGLE, BODY), BODY)
    assert refused.value.hint == DYNAMIC_OFF_HINT
    assert "GEMINI_DYNAMIC_WEBHOOKS" in DYNAMIC_OFF_HINT
    assert server.requests == 0


def test_hmac_refusal_while_dynamic_is_off_has_no_hint() -> None:
    verify = make_verifier({"WEBHOOK_SIGNING_SECRETS": SECRET, "GEMINI_JWKS_URL": ""})
    with pytest.raises(Unauthorized) as refused:
        verify(headers_v1(OTHER_SECRET, BODY), BODY)
    assert refused.value.hint is None


def test_dynamic_v1a_key_added_to_the_set_later_is_picked_up_by_a_refresh() -> None:
    server, clock = jwks_server(GOOGLE), FakeClock()
    verify = make_verifier(dynamic_env(server), clock)
    assert verify(v1a_headers(GOOGLE, BODY), BODY) == "keyset-ed25519"
    rotated = Ed25519Signer()
    server.keys.append(rotated)
    clock.advance(29)  # a refresh so soon is skipped: the rate limit of unknown kids
    with pytest.raises(Unauthorized):
        verify(v1a_headers(rotated, BODY), BODY)
    clock.advance(1)
    assert verify(v1a_headers(rotated, BODY), BODY) == "keyset-ed25519"
    assert server.requests == 2


def test_dynamic_v1a_forged_flood_costs_no_more_fetches_than_unknown_kids() -> None:
    # The same rhythm as test_jwks.test_flood_of_unknown_kids_is_one_fetch_per_interval.
    server, clock = jwks_server(GOOGLE), FakeClock()
    verify = make_verifier(dynamic_env(server), clock)
    forger = Ed25519Signer()
    for _ in range(50):
        with pytest.raises(Unauthorized):
            verify(v1a_headers(forger, BODY), BODY)
        clock.advance(3)
    assert server.requests == 5


def test_dynamic_v1a_key_set_down_during_the_refresh_is_unavailable() -> None:
    server, clock = jwks_server(GOOGLE), FakeClock()
    verify = make_verifier(dynamic_env(server), clock)
    verify(v1a_headers(GOOGLE, BODY), BODY)
    server.down = True
    clock.advance(30)
    with pytest.raises(Unavailable):
        verify(v1a_headers(Ed25519Signer(), BODY), BODY)
    assert verify(v1a_headers(GOOGLE, BODY), BODY) == "keyset-ed25519"  # cached key still works


def test_dynamic_v1a_key_set_down_at_first_use_is_unavailable() -> None:
    server = jwks_server(GOOGLE)
    server.down = True
    with pytest.raises(Unavailable):
        make_verifier(dynamic_env(server))(v1a_headers(GOOGLE, BODY), BODY)


def test_dynamic_v1a_work_is_capped_per_request() -> None:
    server = jwks_server(GOOGLE)
    verify = make_verifier(dynamic_env(server))
    headers = v1a_headers(GOOGLE, BODY)
    forged = "v1a," + base64.b64encode(os.urandom(64)).decode()
    beyond = " ".join([forged] * MAX_V1A_ENTRIES + [headers["webhook-signature"]])
    with pytest.raises(Unauthorized):
        verify(with_signature(headers, beyond), BODY)


def test_dynamic_v1a_never_verifies_with_an_rsa_key() -> None:
    # The set holds only RSA keys: a v1a entry has nothing to verify against, and refreshing
    # does not change that.
    server, clock = jwks_server(KEY), FakeClock()
    verify = make_verifier(dynamic_env(server), clock)
    with pytest.raises(Unauthorized):
        verify(v1a_headers(GOOGLE, BODY), BODY)


def test_hmac_delivery_never_fetches_the_key_set_when_dynamic_is_on() -> None:
    server = jwks_server(GOOGLE)
    verify = make_verifier(dynamic_env(server, WEBHOOK_SIGNING_SECRETS=SECRET))
    assert verify(headers_v1(SECRET, BODY), BODY) == "hmac"
    assert server.requests == 0


def test_eddsa_jwt_from_a_key_set_ed25519_key_is_unauthorized() -> None:
    server = jwks_server(KEY, GOOGLE)
    now = int(time.time())
    claims = {"aud": AUDIENCE, "iat": now, "exp": now + 300}
    token = jwt.encode(claims, GOOGLE.private, algorithm="EdDSA", headers={"kid": GOOGLE.kid})
    verify = make_verifier(dynamic_env(server, GEMINI_JWT_AUDIENCE=AUDIENCE))
    with pytest.raises(Unauthorized, match="RS256"):
        verify(jwt_headers(token), BODY)


def test_rs256_jwt_naming_an_ed25519_key_is_unauthorized() -> None:
    server = jwks_server(KEY, GOOGLE)
    forged = RsaKey(kid=GOOGLE.kid)  # the kid of the set's Ed25519 key
    verify = make_verifier(dynamic_env(server, GEMINI_JWT_AUDIENCE=AUDIENCE))
    with pytest.raises(Unauthorized, match="unknown JWT key id"):
        verify(jwt_headers(good_token(forged)), BODY)


# --- headers first ---------------------------------------------------------------------------


def test_check_head_proves_a_jwt_without_the_body(server: JwksServer) -> None:
    settings = load_settings(jwt_env(server))
    verifier = Verifier(settings, KeySet(server.url, clock=FakeClock()))
    assert verifier.check_head(read_head(Headers(jwt_headers(good_token())))) == "jwt"


def test_check_head_leaves_v1_entries_to_the_body_check(verify: Verify) -> None:
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET, "GEMINI_JWKS_URL": ""})
    head = read_head(Headers(headers_v1(OTHER_SECRET, BODY)))  # wrong secret: body decides
    assert Verifier(settings, None).check_head(head) is None
