"""Dynamic (per-request) deliveries as they have been reported live: `v1a` Ed25519 entries made
with a key of the key set, through the served relay, a real key set on loopback HTTP and the
emulators. Signed with `cryptography` directly (tests/support/signing.py), not our signer."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from tests.integration.conftest import StartRelay
from tests.integration.harness import RelayServer, Stack
from tests.support.signing import Ed25519Signer, JwksServer, RsaKey
from webhook_relay.verify import DYNAMIC_OFF_HINT

pytestmark = pytest.mark.emulators


def envelope() -> bytes:
    job = "batches/dynamic-" + secrets.token_hex(4)  # a job of its own: one terminal event each
    return json.dumps({"type": "batch.succeeded", "version": "v1", "data": {"id": job}}).encode()


def post_v1a(relay: RelayServer, signer: Ed25519Signer, body: bytes) -> tuple[str, int]:
    webhook_id = "msg_" + secrets.token_hex(8)
    now = int(time.time())
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signer.sign(webhook_id, now, body),
    }
    return webhook_id, relay.post(body, headers).status


def test_v1a_from_the_key_set_is_published_as_keyset_ed25519(
    stack: Stack, start_relay: StartRelay
) -> None:
    google, forger = Ed25519Signer(), Ed25519Signer()
    with JwksServer(RsaKey(), google).running() as jwks:
        relay = start_relay(GEMINI_JWKS_URL=jwks.url, GEMINI_DYNAMIC_WEBHOOKS="true")
        subscription = stack.subscribe("gemini-batch")
        accepted_id, accepted = post_v1a(relay, google, envelope())
        _, forged = post_v1a(relay, forger, envelope())
    assert (accepted, forged) == (200, 401)
    [message] = stack.pull(subscription)
    assert message.message.attributes["signature"] == "keyset-ed25519"
    assert json.loads(message.message.data)["id"] == accepted_id


def test_v1a_from_the_key_set_is_refused_by_default_and_the_log_says_why(
    start_relay: StartRelay,
) -> None:
    google = Ed25519Signer()
    with JwksServer(RsaKey(), google).running() as jwks:
        relay = start_relay(GEMINI_JWKS_URL=jwks.url)
        webhook_id, status = post_v1a(relay, google, envelope())
    assert status == 401
    assert jwks.requests == 0
    [line] = [entry for entry in relay.log_lines() if entry.get("webhook_id") == webhook_id]
    assert (line["severity"], line["status"], line["detail"]) == (
        "WARNING",
        "unauthorized",
        "no signature matches",
    )
    assert line["hint"] == DYNAMIC_OFF_HINT
