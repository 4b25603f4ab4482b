"""`relay_callback`: handler, then a checked acknowledgement, driven through the client
library's own streaming-pull `Message`, request queue, futures and `AcknowledgeError`.

What the library's dispatcher does with an `AckRequest` (send it, then complete its future with
the server's verdict) is played here by `Dispatcher`: it completes each future the way the
library does (`set_result(AcknowledgeStatus.SUCCESS)`, `set_exception(AcknowledgeError(...))`,
the `ValueError` of a duplicate ack id). The emulator does the same end to end in
tests/integration/test_subscriber_side.py; a FAILED_PRECONDITION (a detached subscription, a
region's outage) is something the emulator cannot be made to answer, so it is tested here.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.cloud.pubsub_v1.subscriber._protocol import requests
from google.cloud.pubsub_v1.subscriber.exceptions import AcknowledgeError, AcknowledgeStatus
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.types import PubsubMessage

from tests.test_normalize import TIMESTAMP, envelope
from webhook_relay.logs import JsonHandler
from webhook_relay.normalize import normalize
from webhook_relay.subscriber import RelayEvent, relay_callback
from webhook_relay.trace import SAMPLED_KEY, SPAN_KEY, TRACE_KEY

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
EVENT_ID = "msg_sub_1"


def relay_message(
    requests_queue: queue.Queue[Any],
    *,
    exactly_once: bool = True,
    extra_attributes: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Message:
    event = normalize(
        EVENT_ID,
        TIMESTAMP,
        json.dumps(envelope("batch.succeeded", {"id": "batches/b1"})).encode(),
        "hmac",
    )
    proto = PubsubMessage(
        data=event.data() if data is None else data,
        attributes=event.attributes() | (extra_attributes or {}),
        message_id="1001",
    )
    return Message(
        proto._pb,
        "ack-1",
        delivery_attempt=2,
        request_queue=requests_queue,
        exactly_once_delivery_enabled_func=lambda: exactly_once,
    )


class Dispatcher:
    """Takes the requests a Message queues and answers each ack's future with `verdict`."""

    def __init__(self, verdict: Callable[[Any], None] | None) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.seen: list[Any] = []
        self._verdict = verdict
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            self.seen.append(item)
            if isinstance(item, requests.AckRequest) and item.future and self._verdict:
                self._verdict(item.future)

    def stop(self) -> list[Any]:
        self.queue.put(None)
        self._thread.join(timeout=10)
        return self.seen


def succeed(future: Any) -> None:
    future.set_result(AcknowledgeStatus.SUCCESS)


def fail_with(status: AcknowledgeStatus, info: str | None = None) -> Callable[[Any], None]:
    def verdict(future: Any) -> None:
        future.set_exception(AcknowledgeError(status, info))

    return verdict


@pytest.fixture
def handled() -> list[RelayEvent]:
    return []


def recorder(handled: list[RelayEvent]) -> Callable[[RelayEvent], None]:
    return handled.append


def kinds(seen: list[Any]) -> list[str]:
    return [type(item).__name__ for item in seen]


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "webhook_relay.subscriber" and r.levelno == level
    ]


def test_handled_event_is_acked_and_waited_for(
    handled: list[RelayEvent], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dispatcher = Dispatcher(succeed)
    outcome = relay_callback(recorder(handled), project="p-1")(relay_message(dispatcher.queue))
    assert outcome == "acked"
    assert [event.id for event in handled] == [EVENT_ID]
    assert kinds(dispatcher.stop()) == ["AckRequest"]
    (line,) = records(caplog, logging.INFO)
    assert line.__dict__["event_id"] == EVENT_ID
    assert line.__dict__["delivery_attempt"] == 2


@pytest.mark.parametrize(
    "status",
    [
        AcknowledgeStatus.INVALID_ACK_ID,
        AcknowledgeStatus.FAILED_PRECONDITION,
        AcknowledgeStatus.PERMISSION_DENIED,
        AcknowledgeStatus.OTHER,
    ],
    ids=lambda status: status.name,
)
def test_failed_ack_is_logged_as_redelivery_possible_never_raised(
    status: AcknowledgeStatus, handled: list[RelayEvent], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = Dispatcher(fail_with(status, "from the server"))
    outcome = relay_callback(recorder(handled), project="p-1")(relay_message(dispatcher.queue))
    assert outcome == "ack_failed"
    assert len(handled) == 1
    assert kinds(dispatcher.stop()) == ["AckRequest"]  # never nacked after the work was done
    (warning,) = records(caplog, logging.WARNING)
    assert "redelivery possible" in warning.getMessage()
    assert status.name in warning.getMessage()
    assert warning.__dict__["event_id"] == EVENT_ID
    assert warning.__dict__["ack_error"] == status.name


def test_duplicate_ack_id_error_is_a_failed_ack_too(
    handled: list[RelayEvent], caplog: pytest.LogCaptureFixture
) -> None:
    # The library's dispatcher answers an ack id acknowledged twice with a ValueError.
    def duplicate(future: Any) -> None:
        future.set_exception(ValueError("Duplicate ack_id for AckRequest"))

    dispatcher = Dispatcher(duplicate)
    assert relay_callback(recorder(handled))(relay_message(dispatcher.queue)) == "ack_failed"
    dispatcher.stop()
    (warning,) = records(caplog, logging.WARNING)
    assert warning.__dict__["ack_error"] == "ValueError"


def test_unanswered_ack_is_a_failed_ack_not_a_stuck_callback(
    handled: list[RelayEvent], caplog: pytest.LogCaptureFixture
) -> None:
    # A future the library never completes (the stream shut down under it).
    dispatcher = Dispatcher(None)
    callback = relay_callback(recorder(handled), ack_timeout=0.05)
    assert callback(relay_message(dispatcher.queue)) == "ack_failed"
    dispatcher.stop()
    (warning,) = records(caplog, logging.WARNING)
    assert warning.__dict__["ack_error"] == "TimeoutError"


def test_without_exactly_once_the_ack_is_best_effort_success(handled: list[RelayEvent]) -> None:
    dispatcher = Dispatcher(None)  # the library completes nothing: its future is already done
    message = relay_message(dispatcher.queue, exactly_once=False)
    assert relay_callback(recorder(handled))(message) == "acked"
    assert kinds(dispatcher.stop()) == ["AckRequest"]


def test_handler_exception_nacks_and_never_acks(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: RelayEvent) -> None:
        raise RuntimeError("downstream is down")

    dispatcher = Dispatcher(succeed)
    assert relay_callback(broken)(relay_message(dispatcher.queue)) == "nacked"
    assert kinds(dispatcher.stop()) == ["NackRequest"]
    (error,) = records(caplog, logging.ERROR)
    assert error.exc_info is not None
    assert error.__dict__["event_id"] == EVENT_ID


def test_not_a_relay_event_is_nacked_without_calling_the_handler(
    handled: list[RelayEvent], caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = Dispatcher(succeed)
    message = relay_message(dispatcher.queue, data=b"not a cloudevent")
    assert relay_callback(recorder(handled))(message) == "nacked"
    assert handled == []
    assert kinds(dispatcher.stop()) == ["NackRequest"]
    (error,) = records(caplog, logging.ERROR)
    assert error.__dict__["message_id"] == "1001"


# --- one trace: the message's traceparent on the subscriber's log lines -------------------


def test_log_records_carry_the_messages_trace(
    handled: list[RelayEvent], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dispatcher = Dispatcher(fail_with(AcknowledgeStatus.INVALID_ACK_ID))
    message = relay_message(dispatcher.queue, extra_attributes={"traceparent": TRACEPARENT})
    relay_callback(recorder(handled), project="relay-project")(message)
    dispatcher.stop()
    (warning,) = records(caplog, logging.WARNING)
    assert warning.__dict__[TRACE_KEY] == f"projects/relay-project/traces/{TRACE_ID}"
    assert warning.__dict__[SPAN_KEY] == SPAN_ID
    assert warning.__dict__[SAMPLED_KEY] is True


def test_project_defaults_to_the_environment(
    handled: list[RelayEvent], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    dispatcher = Dispatcher(succeed)
    message = relay_message(dispatcher.queue, extra_attributes={"traceparent": TRACEPARENT})
    relay_callback(recorder(handled))(message)
    dispatcher.stop()
    (line,) = records(caplog, logging.INFO)
    assert line.__dict__[TRACE_KEY] == f"projects/env-project/traces/{TRACE_ID}"


@pytest.mark.parametrize(
    "attributes",
    [{}, {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"}, {"traceparent": "garbage"}],
    ids=["none", "all-zero", "garbage"],
)
def test_no_trace_fields_without_a_valid_traceparent(
    attributes: dict[str, str], handled: list[RelayEvent], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dispatcher = Dispatcher(succeed)
    relay_callback(recorder(handled), project="p-1")(
        relay_message(dispatcher.queue, extra_attributes=attributes)
    )
    dispatcher.stop()
    (line,) = records(caplog, logging.INFO)
    assert TRACE_KEY not in line.__dict__


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    handler = JsonHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_handlers_own_log_lines_carry_the_trace_in_cloud_loggings_keys(
    json_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    def handler(event: RelayEvent) -> None:
        logging.getLogger("my.app").info("fetching %s", event.job_id)

    dispatcher = Dispatcher(succeed)
    message = relay_message(dispatcher.queue, extra_attributes={"traceparent": TRACEPARENT})
    relay_callback(handler, project="relay-project")(message)
    dispatcher.stop()
    lines = {line["logger"]: line for line in json_logs()}
    for name in ("my.app", "webhook_relay.subscriber"):
        assert lines[name]["logging.googleapis.com/trace"] == (
            f"projects/relay-project/traces/{TRACE_ID}"
        )
        assert lines[name]["logging.googleapis.com/spanId"] == SPAN_ID
        assert lines[name]["logging.googleapis.com/trace_sampled"] is True
    assert lines["my.app"]["event_id"] == EVENT_ID
    # Outside the handler nothing carries it any more.
    logging.getLogger("my.app").info("later")
    # Only this logger's line: an earlier test's start-up may have left a JSON handler of its
    # own on the root logger, and other threads may log meanwhile.
    later = [line for line in json_logs() if line.get("message") == "later"]
    assert later
    assert all("logging.googleapis.com/trace" not in line for line in later)
