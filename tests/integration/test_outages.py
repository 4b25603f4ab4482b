"""A dependency down mid-run: 503, nothing half-done left behind, and the retry publishes once."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from tests.integration.conftest import StartRelay
from tests.integration.harness import Answer, RelayServer, Stack
from tests.support.signing import headers_v1

COLLECTION = "webhook_deliveries"


BODY = json.dumps(
    {"type": "batch.succeeded", "version": "v1", "data": {"id": "batches/outage"}}
).encode()


def retry_like_gemini(relay: RelayServer, secret: str, webhook_id: str) -> Answer:
    """Resend while the answer is 503, each attempt freshly signed: a restarted emulator's
    first calls may still be slow (a cold JVM), and Gemini would simply retry."""
    for _ in range(10):
        answer = relay.post(BODY, headers_v1(secret, BODY, webhook_id, int(time.time())))
        if answer.status != 503:
            return answer
        time.sleep(0.5)
    return answer


def test_pubsub_down_releases_the_claim_and_the_retry_publishes_once(
    own_stack: Stack, start_own_relay: StartRelay, secret: str
) -> None:
    relay = start_own_relay()
    webhook_id = "msg_pubsub_outage"
    own_stack.pubsub_emulator.stop()

    started = time.monotonic()
    down = relay.post(BODY, headers_v1(secret, BODY, webhook_id))
    took = time.monotonic() - started

    assert (down.status, down.body["status"]) == (503, "unavailable")
    assert int(down.headers["Retry-After"]) >= 1
    assert took < 10
    record = own_stack.record(COLLECTION, webhook_id)
    assert record is not None
    assert record["state"] == "claimed"
    assert record["lease_until"] <= datetime.now(UTC)  # released

    own_stack.pubsub_emulator.start()
    own_stack.create_topics()
    subscription = own_stack.subscribe("gemini-batch")
    retry = retry_like_gemini(relay, secret, webhook_id)
    again = relay.post(BODY, headers_v1(secret, BODY, webhook_id, int(time.time())))

    assert [retry.body["status"], again.body["status"]] == ["accepted", "duplicate"]
    assert len(own_stack.pull(subscription)) == 1
    record = own_stack.record(COLLECTION, webhook_id)
    assert record is not None
    assert record["state"] == "published"
    assert record["attempts"] >= 2  # the claim was released, then taken over


def test_firestore_down_is_unavailable_and_the_retry_publishes_once(
    own_stack: Stack, start_own_relay: StartRelay, secret: str
) -> None:
    relay = start_own_relay()
    subscription = own_stack.subscribe("gemini-batch")
    webhook_id = "msg_firestore_outage"
    own_stack.firestore_emulator.stop()

    started = time.monotonic()
    down = relay.post(BODY, headers_v1(secret, BODY, webhook_id))
    took = time.monotonic() - started

    assert (down.status, down.body["status"]) == (503, "unavailable")
    assert took < 10
    assert own_stack.pull(subscription, settle=0.5) == []

    own_stack.firestore_emulator.start()
    retry = retry_like_gemini(relay, secret, webhook_id)
    again = relay.post(BODY, headers_v1(secret, BODY, webhook_id, int(time.time())))

    assert [retry.body["status"], again.body["status"]] == ["accepted", "duplicate"]
    assert len(own_stack.pull(subscription)) == 1
