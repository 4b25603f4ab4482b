"""Deliveries through the served relay, into the real emulators, read back from Pub/Sub."""

from __future__ import annotations

import base64
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.conftest import StartRelay
from tests.integration.harness import PROJECT, RelayServer, Stack
from tests.support.signing import Ed25519Signer, JwksServer, RsaKey, headers_v1
from webhook_relay.claim import document_id

COLLECTION = "webhook_deliveries"
CATALOG: dict[str, dict[str, Any]] = {
    "batch.succeeded": {"id": "batches/b1", "output_file_uri": "gs://bucket/out.jsonl"},
    "batch.failed": {"id": "batches/b2", "error_code": 13, "error_message": "internal"},
    "batch.expired": {"id": "batches/b3"},
    "batch.cancelled": {"id": "batches/b4"},
    "interaction.requires_action": {"id": "interactions/i1"},
    "interaction.completed": {"id": "interactions/i2"},
    "interaction.failed": {"id": "interactions/i3", "error_code": "FAILED", "error_message": "x"},
    "interaction.cancelled": {"id": "interactions/i4"},
    "video.generated": {"id": "videos/v1", "video_uri": "gs://b/v.mp4", "file_name": "v.mp4"},
}


def job(event_type: str) -> dict[str, Any]:
    """The catalog's data for `event_type`, for a job of its own: the relay publishes one
    terminal event per job, so a test reusing a job id would meet another test's event."""
    data = CATALOG[event_type]
    return data | {"id": f"{data['id']}-{secrets.token_hex(4)}"}


def envelope(event_type: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"type": event_type, "version": "v1", "timestamp": "2026-11-24T10:00:00Z", "data": data}
    ).encode()


def new_id() -> str:
    return "msg_" + secrets.token_hex(8)


def deliver(relay: RelayServer, secret: str, body: bytes, webhook_id: str) -> int:
    return relay.post(body, headers_v1(secret, body, webhook_id)).status


@pytest.mark.parametrize("event_type", sorted(CATALOG))
def test_catalog_event_arrives_on_its_topic(
    stack: Stack, relay: RelayServer, secret: str, event_type: str
) -> None:
    topic = "gemini-" + event_type.partition(".")[0]
    subscription = stack.subscribe(topic)
    webhook_id = new_id()
    data = job(event_type)
    body = envelope(event_type, data)

    answer = relay.post(body, headers_v1(secret, body, webhook_id))

    assert (answer.status, answer.body) == (200, {"status": "accepted", "webhook_id": webhook_id})
    [received] = stack.pull(subscription)
    event = json.loads(received.message.data)
    assert event["id"] == webhook_id
    assert event["type"] == event_type
    assert event["subject"] == data["id"]
    assert event["signature"] == "hmac"
    assert event["data"]["job_id"] == data["id"]
    assert event["data"]["terminal"] is (event_type != "interaction.requires_action")
    assert event["data"]["gemini"] == json.loads(body)
    assert dict(received.message.attributes) == {
        "event_type": event_type,
        "webhook_id": webhook_id,
        "subject": data["id"],
        "signature": "hmac",
        "content-type": "application/cloudevents+json; charset=utf-8",
        "ce-specversion": "1.0",
        "ce-id": webhook_id,
        "ce-source": event["source"],
        "ce-type": event_type,
        "ce-time": event["time"],
        "ce-subject": data["id"],
    }


def test_unknown_type_goes_to_unrouted(stack: Stack, relay: RelayServer, secret: str) -> None:
    subscription = stack.subscribe("gemini-unrouted")
    body = envelope("model.tuned", {"id": "tunedModels/t1"})

    assert deliver(relay, secret, body, new_id()) == 200

    [received] = stack.pull(subscription)
    assert json.loads(received.message.data)["data"]["kind"] == "other"


def test_unreadable_body_is_quarantined_on_unrouted(
    stack: Stack, relay: RelayServer, secret: str
) -> None:
    subscription = stack.subscribe("gemini-unrouted")
    webhook_id = new_id()

    answer = relay.post(b"[1, 2]", headers_v1(secret, b"[1, 2]", webhook_id))

    assert answer.body["status"] == "quarantined"
    [received] = stack.pull(subscription)
    event = json.loads(received.message.data)
    assert event["type"] == "relay.quarantined"
    assert base64.b64decode(event["data"]["body_base64"]) == b"[1, 2]"


def test_resend_and_retry_are_duplicates(stack: Stack, relay: RelayServer, secret: str) -> None:
    subscription = stack.subscribe("gemini-batch")
    webhook_id = new_id()
    body = envelope("batch.succeeded", job("batch.succeeded"))
    first = headers_v1(secret, body, webhook_id)

    statuses = [
        relay.post(body, first).body["status"],
        relay.post(body, first).body["status"],  # the same request again
        # Gemini's retry: same id, a new timestamp and signature
        relay.post(body, headers_v1(secret, body, webhook_id, int(time.time()) + 1)).body["status"],
    ]

    assert statuses == ["accepted", "duplicate", "duplicate"]
    assert len(stack.pull(subscription)) == 1


def test_concurrent_identical_deliveries_publish_once(
    stack: Stack, relay: RelayServer, secret: str
) -> None:
    subscription = stack.subscribe("gemini-batch")
    webhook_id = new_id()
    body = envelope("batch.succeeded", job("batch.succeeded"))
    headers = headers_v1(secret, body, webhook_id)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: relay.post(body, headers), range(20)))

    statuses = sorted(answer.body["status"] for answer in answers)
    assert statuses.count("accepted") == 1
    assert set(statuses) <= {"accepted", "duplicate", "in_flight"}
    assert all(a.headers["Retry-After"] for a in answers if a.status == 409)
    assert max(float(entry.get("latency_ms", 0)) for entry in relay.log_lines()) < 10_000
    # Every retry after the winner finished is a duplicate.
    retries = [relay.post(body, headers).body["status"] for _ in answers]
    assert set(retries) == {"duplicate"}
    assert len(stack.pull(subscription)) == 1


def test_record_after_an_accepted_delivery(stack: Stack, relay: RelayServer, secret: str) -> None:
    webhook_id = new_id()
    data = job("video.generated")
    body = envelope("video.generated", data)
    before = datetime.now(UTC)

    assert deliver(relay, secret, body, webhook_id) == 200

    record = stack.record(COLLECTION, webhook_id)
    assert record is not None
    assert record["webhook_id"] == webhook_id
    assert record["state"] == "published"
    assert record["attempts"] == 1
    assert record["event_type"] == "video.generated"
    assert record["subject"] == data["id"]
    assert record["topic"] == "gemini-video"
    assert record["message_id"]
    assert before - timedelta(seconds=5) <= record["first_seen_at"] <= record["published_at"]
    ttl = record["expire_at"] - record["published_at"]
    assert timedelta(hours=71) < ttl <= timedelta(hours=72)


@pytest.mark.parametrize(
    "webhook_id",
    ["a/b/../c", "ünïcødé-✓", "x" * 1024, "__reserved__", ".."],
    ids=["slashes", "unicode", "1KiB", "reserved-name", "dotdot"],
)
def test_any_webhook_id_is_a_key(
    stack: Stack, relay: RelayServer, secret: str, webhook_id: str
) -> None:
    body = envelope("batch.expired", {"id": "batches/" + secrets.token_hex(4)})
    headers = headers_v1(secret, body, webhook_id)
    stack.db.collection(COLLECTION).document(document_id(webhook_id)).delete()

    first = relay.post(body, headers)
    again = relay.post(body, headers)

    assert (first.status, first.body["status"]) == (200, "accepted")
    assert again.body == {"status": "duplicate", "webhook_id": webhook_id}


def test_live_claim_of_another_request_is_in_flight(
    stack: Stack, relay: RelayServer, secret: str
) -> None:
    webhook_id = new_id()
    now = datetime.now(UTC)
    stack.db.collection(COLLECTION).document(document_id(webhook_id)).set(
        {
            "webhook_id": webhook_id,
            "state": "claimed",
            "attempts": 1,
            "lease_until": now + timedelta(seconds=20),
        }
    )
    body = envelope("batch.expired", {"id": "batches/" + secrets.token_hex(4)})

    answer = relay.post(body, headers_v1(secret, body, webhook_id))

    assert (answer.status, answer.body["status"]) == (409, "in_flight")
    assert 1 <= int(answer.headers["Retry-After"]) <= 20


def test_claim_left_by_a_crashed_request_is_taken_over(
    stack: Stack, relay: RelayServer, secret: str
) -> None:
    subscription = stack.subscribe("gemini-batch")
    webhook_id = new_id()
    crashed = datetime.now(UTC) - timedelta(minutes=5)
    stack.db.collection(COLLECTION).document(document_id(webhook_id)).set(
        {
            "webhook_id": webhook_id,
            "state": "claimed",
            "attempts": 1,
            "lease_until": crashed + timedelta(seconds=30),
            "first_seen_at": crashed,
        }
    )
    body = envelope("batch.succeeded", job("batch.succeeded"))

    assert relay.post(body, headers_v1(secret, body, webhook_id)).body["status"] == "accepted"

    record = stack.record(COLLECTION, webhook_id)
    assert record is not None
    assert (record["state"], record["attempts"]) == ("published", 2)
    assert record["first_seen_at"] == crashed
    assert len(stack.pull(subscription)) == 1


def test_routes_from_relay_routes(stack: Stack, start_relay: StartRelay, secret: str) -> None:
    relay = start_relay(
        RELAY_ROUTES=json.dumps({"batch.failed": "gemini-video", "batch.*": "gemini-interaction"})
    )
    failed, other = stack.subscribe("gemini-video"), stack.subscribe("gemini-interaction")

    assert (
        deliver(
            relay, secret, envelope("batch.failed", {"id": "b1-" + secrets.token_hex(4)}), new_id()
        )
        == 200
    )
    assert (
        deliver(
            relay, secret, envelope("batch.expired", {"id": "b2-" + secrets.token_hex(4)}), new_id()
        )
        == 200
    )

    assert [m.message.attributes["event_type"] for m in stack.pull(failed)] == ["batch.failed"]
    assert [m.message.attributes["event_type"] for m in stack.pull(other)] == ["batch.expired"]


def test_project_of_the_records_is_the_configured_one(stack: Stack) -> None:
    assert stack.db.project == PROJECT


def test_jwt_and_ed25519_deliveries_are_accepted(
    stack: Stack, start_relay: StartRelay, secret: str
) -> None:
    key, signer = RsaKey(), Ed25519Signer()
    with JwksServer(key).running() as jwks:
        relay = start_relay(
            GEMINI_JWKS_URL=jwks.url,
            GEMINI_JWT_AUDIENCE="https://relay.example/hook",
            WEBHOOK_PUBLIC_KEYS=signer.public_key,
        )
        subscription = stack.subscribe("gemini-batch")
        # Three jobs: a second terminal event of one job would be a duplicate.
        body, ed_body, again = (
            envelope("batch.expired", {"id": "batches/jwt-" + secrets.token_hex(4)})
            for _ in range(3)
        )
        now = int(time.time())
        token = key.token({"aud": "https://relay.example/hook"})
        by_jwt = relay.post(
            body,
            {
                "webhook-id": "jwt-" + new_id(),
                "webhook-timestamp": str(now),
                "webhook-signature": token,
            },
        )
        ed_id = "ed-" + new_id()
        by_ed25519 = relay.post(
            ed_body,
            {
                "webhook-id": ed_id,
                "webhook-timestamp": str(now),
                "webhook-signature": signer.sign(ed_id, now, ed_body),
            },
        )
        # A second JWT delivery is served from the cached key set: one fetch in all.
        relay.post(
            again,
            {
                "webhook-id": "jwt-" + new_id(),
                "webhook-timestamp": str(now),
                "webhook-signature": key.token({"aud": "https://relay.example/hook"}),
            },
        )

    assert (by_jwt.status, by_ed25519.status) == (200, 200)
    assert jwks.requests == 1
    signatures = sorted(m.message.attributes["signature"] for m in stack.pull(subscription))
    assert signatures == ["ed25519", "jwt", "jwt"]
