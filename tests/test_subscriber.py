"""The subscriber helper reads back exactly what `normalize` publishes, and nothing else."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Any

import pytest
from google.cloud.pubsub_v1.types import PubsubMessage, ReceivedMessage

from webhook_relay.cli.catalog import EVENT_TYPES, envelope, sample_data
from webhook_relay.normalize import Event, normalize
from webhook_relay.subscriber import NotARelayEvent, RelayEvent, parse_event

TIMESTAMP = 1_777_888_999


@dataclass(frozen=True)
class Message:
    """What a streaming-pull callback gets: `.data` bytes and `.attributes`."""

    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)


def published(body: bytes | dict[str, Any], signature: str = "hmac") -> tuple[Event, Message]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    event = normalize("msg_abc", TIMESTAMP, raw, signature)
    return event, Message(event.data(), event.attributes())


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_catalog_type_round_trips(event_type: str) -> None:
    body = envelope(event_type, sample_data(event_type, "job_1") | {"user_metadata": {"k": "v"}})
    event, message = published(body)
    parsed = parse_event(message)

    data = event.cloudevent["data"]
    assert parsed.id == "msg_abc"
    assert parsed.type == event_type
    assert parsed.subject == "job_1" == parsed.job_id
    assert parsed.time == body["timestamp"]
    assert parsed.signature == "hmac"
    assert parsed.kind == event_type.partition(".")[0]
    assert parsed.outcome == event_type.rpartition(".")[2]
    assert parsed.terminal is (event_type != "interaction.requires_action")
    assert parsed.output_uri == data["output_uri"]
    assert parsed.file_name == data["file_name"]
    assert parsed.error == data["error"]
    assert parsed.user_metadata == {"k": "v"}
    assert parsed.gemini == body
    assert parsed.attributes == event.attributes()
    assert parsed.cloudevent == event.cloudevent
    assert not parsed.quarantined
    assert parsed.reason is None
    assert parsed.body is None
    if event_type in ("batch.succeeded", "video.generated"):
        assert parsed.output_uri is not None
        assert parsed.output_uri.startswith("gs://")
    if event_type.endswith(".failed"):
        assert parsed.error == {"code": "INTERNAL", "message": "sample failure"}


def test_every_input_shape_gives_the_same_event() -> None:
    event, message = published(envelope("batch.succeeded", sample_data("batch.succeeded")))
    expected = parse_event(message)
    proto = PubsubMessage(data=event.data(), attributes=event.attributes(), message_id="7")
    assert parse_event(proto) == expected
    assert parse_event(ReceivedMessage(ack_id="a", message=proto)) == expected
    assert parse_event(event.data()) == expected
    assert parse_event(bytearray(event.data())) == expected
    assert parse_event(memoryview(event.data())) == expected
    assert parse_event(event.data()).attributes == {}


def test_unknown_types_and_video_uri() -> None:
    body = {
        "type": "model.tuned.ready",
        "timestamp": "2026-05-04T10:00:00+02:00",
        "data": {"id": 42, "video_uri": "gs://b/v.mp4", "error": {"code": 7, "message": "m"}},
    }
    parsed = parse_event(published(body, "jwt")[1])
    assert parsed.kind == "other"
    assert parsed.outcome == "ready"
    assert parsed.terminal is True
    assert parsed.subject == "42"
    assert parsed.output_uri == "gs://b/v.mp4"
    assert parsed.error == {"code": 7, "message": "m"}
    assert parsed.signature == "jwt"
    assert parsed.time == "2026-05-04T10:00:00+02:00"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"no": "type"}', b"\xff\xfe"])
def test_quarantined_bodies_round_trip(body: bytes) -> None:
    event, message = published(body)
    parsed = parse_event(message)
    assert parsed.quarantined
    assert parsed.type == "relay.quarantined"
    assert parsed.body == body
    assert parsed.reason == event.cloudevent["data"]["reason"]
    assert parsed.subject is None
    assert parsed.kind is None
    assert parsed.terminal is False
    assert parsed.gemini is None


def test_the_event_is_frozen() -> None:
    parsed = parse_event(published(envelope("batch.expired", {"id": "b"}))[1])
    with pytest.raises(FrozenInstanceError):
        parsed.type = "batch.succeeded"  # type: ignore[misc]
    assert isinstance(parsed, RelayEvent)


def _cloudevent() -> dict[str, Any]:
    event, _ = published(envelope("batch.succeeded", sample_data("batch.succeeded")))
    document: dict[str, Any] = json.loads(event.data())
    return document


def _without_data_field(name: str) -> dict[str, Any]:
    document = _cloudevent()
    del document["data"][name]
    return document


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps(_cloudevent() | {"specversion": "0.3"}).encode(), "specversion"),
        (json.dumps(_cloudevent() | {"source": "https://evil.example"}).encode(), "source"),
        (json.dumps(_cloudevent() | {"type": ""}).encode(), "no type"),
        (json.dumps(_cloudevent() | {"id": 5}).encode(), "no id"),
        (json.dumps(_cloudevent() | {"data": "x"}).encode(), "no data object"),
        (json.dumps(_cloudevent() | {"subject": 5}).encode(), "subject"),
        (json.dumps(_without_data_field("gemini")).encode(), "missing gemini"),
        (json.dumps(_without_data_field("kind")).encode(), "missing kind"),
        (
            json.dumps(_cloudevent() | {"data": _cloudevent()["data"] | {"terminal": "yes"}}),
            "terminal",
        ),
        (
            json.dumps(
                _cloudevent() | {"type": "relay.quarantined", "data": {"reason": "r"}}
            ).encode(),
            "body_base64",
        ),
        (
            json.dumps(
                _cloudevent()
                | {"type": "relay.quarantined", "data": {"reason": "r", "body_base64": "*"}}
            ).encode(),
            "not base64",
        ),
    ],
)
def test_anything_else_is_not_a_relay_event(data: bytes | str, reason: str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(NotARelayEvent, match=reason):
        parse_event(Message(raw))


def test_attributes_must_agree_with_the_event() -> None:
    event, _ = published(envelope("batch.succeeded", {"id": "b"}))
    message = Message(event.data(), event.attributes() | {"event_type": "video.generated"})
    with pytest.raises(NotARelayEvent, match="event_type"):
        parse_event(message)


def test_not_a_message_at_all() -> None:
    with pytest.raises(NotARelayEvent, match="expected a Pub/Sub message"):
        parse_event("a string")
    with pytest.raises(NotARelayEvent, match="expected a Pub/Sub message"):
        parse_event(object())
    # A ValueError, so `except ValueError` catches it too.
    assert issubclass(NotARelayEvent, ValueError)


def test_quarantined_body_is_decoded_exactly() -> None:
    body = bytes(range(256))
    parsed = parse_event(published(body)[1])
    assert parsed.body == body
    assert parsed.cloudevent["data"]["body_base64"] == base64.b64encode(body).decode()
