"""Published messages as CloudEvents tooling reads them: the `cloudevents` SDK, not our code.

Google's Pub/Sub protocol binding, structured mode: the message data is the event, the
`content-type` attribute says so, and the `ce-*` attributes mirror its core context.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudevents.http import from_http

from tests.test_normalize import CATALOG, TIMESTAMP, WEBHOOK_ID, envelope
from webhook_relay.normalize import Event, normalize

BODIES = [
    pytest.param(json.dumps(envelope(event_type, data)).encode(), id=event_type)
    for event_type, data, *_ in CATALOG
] + [pytest.param(b"not json", id="quarantined")]


def published(body: bytes) -> Event:
    return normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")


@pytest.mark.parametrize("body", BODIES)
def test_sdk_reads_the_structured_event(body: bytes) -> None:
    event = published(body)
    attributes = event.attributes()
    read = from_http({"content-type": attributes["content-type"]}, event.data())
    expected: dict[str, Any] = dict(event.cloudevent)
    assert {name: read[name] for name in expected if name != "data"} == {
        name: value for name, value in expected.items() if name != "data"
    }
    assert read.data == expected["data"]


@pytest.mark.parametrize("body", BODIES)
def test_ce_attributes_mirror_the_event_as_the_sdk_reads_them(body: bytes) -> None:
    # Binary-mode readers (Eventarc-style) take the context from the ce-* attributes alone.
    event = published(body)
    mirrored = {k: v for k, v in event.attributes().items() if k.startswith("ce-")}
    read = from_http(mirrored | {"content-type": "application/json"}, event.data())
    for name in ("specversion", "id", "source", "type", "time", "subject"):
        assert read.get(name) == event.cloudevent.get(name)
