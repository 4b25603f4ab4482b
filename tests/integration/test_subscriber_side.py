"""The subscriber's side, on the Pub/Sub emulator: events the served relay published, read by a
streaming pull through `relay_callback`.

What the emulator (cloud-pubsub-emulator 0.8.20, gcloud 528) does, checked with the real
client:
- exactly-once delivery: supported. It keeps `enable_exactly_once_delivery`, tells the
  streaming pull (`Message.exactly_once_enabled` is true), answers `ack_with_response` with
  SUCCESS, and refuses a superseded ack id with `EXACTLY_ONCE_ACKID_FAILURE` /
  `PERMANENT_FAILURE_INVALID_ACK_ID`, which the client library turns into
  `AcknowledgeError(INVALID_ACK_ID)`. So both the confirmed and the failed ack are tested here
  end to end. A FAILED_PRECONDITION cannot be provoked on it: that one is tested with the
  library's own futures in tests/test_subscriber_callback.py.
- subscription filters: stored (`get_subscription` returns the filter) but NOT applied: a
  subscription filtered on `attributes.um_team = "search"` receives every message. So the
  filter test checks what a filter reads, the attribute values on the published messages, and
  accepts either behaviour from the emulator for the filtered subscription itself.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud.pubsub_v1.subscriber.message import Message

from tests.integration.harness import PROJECT, RelayServer, Stack
from tests.support.signing import headers_v1
from webhook_relay.subscriber import Outcome, RelayEvent, relay_callback
from webhook_relay.trace import SPAN_KEY, TRACE_KEY

TOPIC = "gemini-batch"
ACK_DEADLINE_SECONDS = 10
WAIT_SECONDS = 60.0


def exactly_once_subscription(stack: Stack, **extra: Any) -> str:
    path = f"projects/{PROJECT}/subscriptions/eo-{time.monotonic_ns()}"
    stack.subscriber.create_subscription(
        request={
            "name": path,
            "topic": stack.publisher.topic_path(PROJECT, TOPIC),
            "enable_exactly_once_delivery": True,
            "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
            **extra,
        }
    )
    assert stack.subscriber.get_subscription(subscription=path).enable_exactly_once_delivery
    return path


def deliver(
    relay: RelayServer, secret: str, metadata: Any = None, headers: dict[str, str] | None = None
) -> str:
    webhook_id = "msg_" + secrets.token_hex(8)
    data: dict[str, Any] = {"id": f"batches/b-{secrets.token_hex(4)}"}
    if metadata is not None:
        data["user_metadata"] = metadata
    body = json.dumps({"type": "batch.succeeded", "version": "v1", "data": data}).encode()
    answer = relay.post(body, headers_v1(secret, body, webhook_id) | (headers or {}))
    assert answer.status == 200, answer.body
    return webhook_id


class Outcomes:
    """Each message's outcome as `relay_callback` returned it, in order, with a wait."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Outcome]] = []
        self.ack_ids: list[str] = []
        self._changed = threading.Condition()

    def wrap(self, callback: Callable[[Message], Outcome]) -> Callable[[Message], None]:
        def wrapped(message: Message) -> None:
            outcome = callback(message)
            with self._changed:
                self.seen.append((message.message_id, outcome))
                self.ack_ids.append(message.ack_id)
                self._changed.notify_all()

        return wrapped

    def wait_for(self, count: int) -> list[Outcome]:
        deadline = time.monotonic() + WAIT_SECONDS
        with self._changed:
            while len(self.seen) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"only {self.seen} after {WAIT_SECONDS} s"
                self._changed.wait(left)
            return [outcome for _, outcome in self.seen]


@contextmanager
def streaming(stack: Stack, path: str, callback: Callable[[Message], None]) -> Iterator[None]:
    stream = stack.subscriber.subscribe(path, callback=callback)
    try:
        yield
    finally:
        stream.cancel()
        stream.result(timeout=30)


def nothing_more_arrives(stack: Stack, path: str, ack_ids: list[str]) -> bool:
    """Nack every ack id the stream saw, then pull: a message whose ack was not final would be
    redelivered at once (no waiting out a lease the library extended to 60 s); an acked one is
    gone, and the server refuses its ack id."""
    for ack_id in ack_ids:
        with suppress(api_exceptions.GoogleAPICallError):
            stack.subscriber.modify_ack_deadline(
                subscription=path, ack_ids=[ack_id], ack_deadline_seconds=0
            )
    return stack.pull(path, settle=2.0) == []


class Idempotent:
    """The README's handler: its work is done once per event id, however often it runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.done: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, event: RelayEvent) -> None:
        with self._lock:
            self.runs.append(event.id)
            if event.id in self.done:
                return
            self.done.append(event.id)


def test_handled_event_is_acked_and_never_redelivered(
    stack: Stack, relay: RelayServer, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = exactly_once_subscription(stack)
    webhook_id = deliver(relay, secret)
    handler, outcomes = Idempotent(), Outcomes()

    with streaming(stack, path, outcomes.wrap(relay_callback(handler))):
        assert outcomes.wait_for(1) == ["acked"]
    assert handler.runs == [webhook_id]
    assert nothing_more_arrives(stack, path, outcomes.ack_ids)


def test_failed_ack_is_logged_and_the_redelivery_is_handled_idempotently(
    stack: Stack, relay: RelayServer, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = exactly_once_subscription(stack)
    webhook_id = deliver(relay, secret)
    handler, outcomes = Idempotent(), Outcomes()
    ack_ids: list[str] = []

    def losing_its_lease_once(event: RelayEvent) -> None:
        handler(event)
        if len(handler.runs) == 1:
            # What a handler outliving its ack deadline meets: Pub/Sub hands the message to
            # another delivery and this ack id is no longer valid.
            stack.subscriber.modify_ack_deadline(
                subscription=path, ack_ids=[ack_ids[-1]], ack_deadline_seconds=0
            )

    callback = relay_callback(losing_its_lease_once)

    def remembering(message: Message) -> Outcome:
        ack_ids.append(message.ack_id)
        return callback(message)

    with streaming(stack, path, outcomes.wrap(remembering)):
        # In either order: the redelivery may be handled before the failed ack's answer.
        assert sorted(outcomes.wait_for(2)) == ["ack_failed", "acked"]
    assert handler.runs == [webhook_id, webhook_id]
    assert handler.done == [webhook_id]  # the work itself, once
    warnings = [
        r
        for r in caplog.records
        if r.name == "webhook_relay.subscriber" and r.levelno == logging.WARNING
    ]
    assert [(w.__dict__["event_id"], w.__dict__["ack_error"]) for w in warnings] == [
        (webhook_id, "INVALID_ACK_ID")
    ]
    assert "redelivery possible" in warnings[0].getMessage()
    assert nothing_more_arrives(stack, path, outcomes.ack_ids)


def test_handler_exception_nacks_and_pubsub_redelivers(
    stack: Stack, relay: RelayServer, secret: str
) -> None:
    path = exactly_once_subscription(stack)
    webhook_id = deliver(relay, secret)
    runs: list[str] = []

    def fails_once(event: RelayEvent) -> None:
        runs.append(event.id)
        if len(runs) == 1:
            raise RuntimeError("downstream unavailable")

    outcomes = Outcomes()
    with streaming(stack, path, outcomes.wrap(relay_callback(fails_once))):
        assert outcomes.wait_for(2) == ["nacked", "acked"]
    assert runs == [webhook_id, webhook_id]
    assert nothing_more_arrives(stack, path, outcomes.ack_ids)


def test_the_redelivery_check_sees_a_message_left_unacked(
    stack: Stack, relay: RelayServer, secret: str
) -> None:
    # The control for `nothing_more_arrives`: without an ack, the message does come back.
    path = exactly_once_subscription(stack)
    deliver(relay, secret)
    outcomes = Outcomes()
    with streaming(stack, path, outcomes.wrap(lambda message: "acked")):
        outcomes.wait_for(1)
    assert not nothing_more_arrives(stack, path, outcomes.ack_ids)


def test_metadata_attributes_select_one_teams_events(
    stack: Stack, relay: RelayServer, secret: str
) -> None:
    team_filter = 'attributes.um_team = "search"'
    everything = stack.subscribe(TOPIC)
    filtered = f"projects/{PROJECT}/subscriptions/search-team-{time.monotonic_ns()}"
    stack.subscriber.create_subscription(
        request={
            "name": filtered,
            "topic": stack.publisher.topic_path(PROJECT, TOPIC),
            "filter": team_filter,
        }
    )
    assert stack.subscriber.get_subscription(subscription=filtered).filter == team_filter

    search = deliver(relay, secret, {"team": "search", "priority": 3, "urgent": True})
    ads = deliver(relay, secret, {"team": "ads", "labels": {"x": "y"}})
    nothing = deliver(relay, secret)

    received = {
        m.message.attributes["webhook_id"]: dict(m.message.attributes)
        for m in stack.pull(everything)
    }
    metadata = {
        webhook_id: {k: v for k, v in attributes.items() if k.startswith("um_")}
        for webhook_id, attributes in received.items()
    }
    assert metadata == {
        search: {"um_team": "search", "um_priority": "3", "um_urgent": "true"},
        ads: {"um_team": "ads", "um_skipped": "labels"},
        nothing: {},
    }
    # The filter compares the attribute exactly: only the search team's event matches it.
    assert [w for w, m in metadata.items() if m.get("um_team") == "search"] == [search]
    # The emulator stores the filter but does not apply it (see the module docstring).
    got = {m.message.attributes["webhook_id"] for m in stack.pull(filtered)}
    assert got in ({search}, {search, ads, nothing})


def test_the_delivery_trace_reaches_the_subscribers_log_lines(
    stack: Stack, relay: RelayServer, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{span_id}-01"
    path = exactly_once_subscription(stack)
    deliver(relay, secret, headers={"traceparent": traceparent})
    attributes: list[dict[str, str]] = []
    callback = relay_callback(Idempotent(), project=PROJECT)

    def recording(message: Message) -> Outcome:
        attributes.append(dict(message.attributes))
        return callback(message)

    outcomes = Outcomes()
    with streaming(stack, path, outcomes.wrap(recording)):
        assert outcomes.wait_for(1) == ["acked"]
    assert attributes[0]["traceparent"] == traceparent
    (line,) = [
        r
        for r in caplog.records
        if r.name == "webhook_relay.subscriber" and r.levelno == logging.INFO
    ]
    assert line.__dict__[TRACE_KEY] == f"projects/{PROJECT}/traces/{trace_id}"
    assert line.__dict__[SPAN_KEY] == span_id
