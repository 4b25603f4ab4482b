"""For subscribers: read a message the relay published into a typed `RelayEvent`, and run a
handler on it with an acknowledgement that is checked (`relay_callback`).

    from google.cloud.pubsub_v1 import SubscriberClient
    from webhook_relay.subscriber import relay_callback

    def handle(event):  # idempotent on event.id: see relay_callback
        ...

    SubscriberClient().subscribe(subscription_path, callback=relay_callback(handle))

Or read messages yourself:

    from webhook_relay.subscriber import NotARelayEvent, parse_event

    def callback(message):
        try:
            event = parse_event(message)
        except NotARelayEvent as error:
            ...  # not published by the relay: dead-letter it, log it
        if event.type == "batch.succeeded" and event.output_uri:
            ...  # fetch the results: the body is a pointer, never the output itself

`parse_event` takes a Pub/Sub message (anything with `.data` bytes and `.attributes`: a
streaming-pull `Message`, a `PubsubMessage`, a pull `ReceivedMessage`) or the raw data bytes.
It checks the CloudEvent envelope and the fields the contract promises, and nothing about the
Gemini envelope inside `gemini`, which is passed on verbatim.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from . import logs, trace
from .normalize import QUARANTINED, SOURCE

if TYPE_CHECKING:  # the package imports this module: it must not load the Pub/Sub client
    from google.cloud.pubsub_v1.subscriber.message import Message

SPECVERSION = "1.0"
# How long `relay_callback` waits for Pub/Sub to confirm an acknowledgement. Past it the ack
# may still land; it is reported like a failed one, as redelivery is then possible.
ACK_TIMEOUT_SECONDS = 60.0
Outcome = Literal["acked", "ack_failed", "nacked"]
log = logging.getLogger(__name__)
_EVENT_FIELDS = (
    "kind",
    "outcome",
    "terminal",
    "job_id",
    "output_uri",
    "file_name",
    "error",
    "user_metadata",
    "gemini",
)


class NotARelayEvent(ValueError):
    """The message is not a CloudEvent published by the relay."""


class _Message(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def attributes(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class RelayEvent:
    """One normalized Gemini event (see "Published message" in the contract).

    For a quarantined delivery (`type` `relay.quarantined`) the event fields are None (and
    `terminal` False) and `reason` and `body` hold why and what was delivered.
    """

    id: str  # the webhook-id: stable across Gemini's retries
    type: str
    subject: str | None
    time: str
    signature: str  # hmac | ed25519 | keyset-ed25519 | jwt | reconciled
    kind: str | None  # batch | interaction | video | other
    outcome: str | None
    terminal: bool
    job_id: str | None
    output_uri: str | None
    file_name: str | None
    error: Mapping[str, Any] | None
    user_metadata: Any
    gemini: Mapping[str, Any] | None  # the delivered envelope, verbatim
    reason: str | None = None
    body: bytes | None = None
    attributes: Mapping[str, str] = field(default_factory=dict, compare=False)
    cloudevent: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def quarantined(self) -> bool:
        return self.reason is not None


def parse_event(message: _Message | bytes | bytearray | memoryview | Any) -> RelayEvent:
    """The event in `message`; `NotARelayEvent` if it is not one the relay published."""
    data, attributes = _unwrap(message)
    try:
        cloudevent = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NotARelayEvent("message data is not JSON") from None
    if not isinstance(cloudevent, dict):
        raise NotARelayEvent("message data is not a JSON object")
    if cloudevent.get("specversion") != SPECVERSION:
        raise NotARelayEvent(f"not a CloudEvent {SPECVERSION} (specversion is missing or other)")
    if cloudevent.get("source") != SOURCE:
        raise NotARelayEvent(f"CloudEvent source is not {SOURCE}")
    for name in ("id", "type", "time", "signature"):
        if not isinstance(cloudevent.get(name), str) or not cloudevent[name]:
            raise NotARelayEvent(f"CloudEvent has no {name}")
    event_type: str = cloudevent["type"]
    declared = attributes.get("event_type")
    if declared is not None and declared != event_type:
        raise NotARelayEvent("attribute event_type does not match the CloudEvent type")
    subject = cloudevent.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise NotARelayEvent("CloudEvent subject is not a string")
    payload = cloudevent.get("data")
    if not isinstance(payload, dict):
        raise NotARelayEvent("CloudEvent has no data object")

    common: dict[str, Any] = {
        "id": cloudevent["id"],
        "type": event_type,
        "subject": subject,
        "time": cloudevent["time"],
        "signature": cloudevent["signature"],
        "attributes": attributes,
        "cloudevent": cloudevent,
    }
    # A delivered event whose type is `relay.quarantined` (reserved, but a sender may send it)
    # carries the Gemini envelope; only the relay's own quarantine has none.
    if event_type == QUARANTINED and "gemini" not in payload:
        return _quarantined(payload, common)

    missing = [name for name in _EVENT_FIELDS if name not in payload]
    if missing:
        raise NotARelayEvent(f"CloudEvent data is missing {', '.join(missing)}")
    checks: dict[str, Callable[[Any], bool]] = {
        "kind": lambda value: isinstance(value, str),
        "outcome": lambda value: isinstance(value, str),
        "terminal": lambda value: isinstance(value, bool),
        "job_id": _optional_text,
        "output_uri": _optional_text,
        "file_name": _optional_text,
        "error": lambda value: value is None or isinstance(value, dict),
        "gemini": lambda value: isinstance(value, dict),
    }
    for name, valid in checks.items():
        if not valid(payload[name]):
            raise NotARelayEvent(f"CloudEvent data field {name} has the wrong type")
    return RelayEvent(
        **common,
        kind=payload["kind"],
        outcome=payload["outcome"],
        terminal=payload["terminal"],
        job_id=payload["job_id"],
        output_uri=payload["output_uri"],
        file_name=payload["file_name"],
        error=payload["error"],
        user_metadata=payload["user_metadata"],
        gemini=payload["gemini"],
    )


def _quarantined(payload: dict[str, Any], common: dict[str, Any]) -> RelayEvent:
    reason, encoded = payload.get("reason"), payload.get("body_base64")
    if not isinstance(reason, str) or not isinstance(encoded, str):
        raise NotARelayEvent("quarantined event data needs reason and body_base64")
    try:
        body = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise NotARelayEvent("quarantined event body_base64 is not base64") from None
    return RelayEvent(
        **common,
        kind=None,
        outcome=None,
        terminal=False,
        job_id=None,
        output_uri=None,
        file_name=None,
        error=None,
        user_metadata=None,
        gemini=None,
        reason=reason,
        body=body,
    )


def _optional_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _unwrap(message: Any) -> tuple[bytes, dict[str, str]]:
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message), {}
    inner = getattr(message, "message", None)  # a pull ReceivedMessage wraps a PubsubMessage
    if inner is not None and hasattr(inner, "data") and not hasattr(message, "data"):
        message = inner
    data = getattr(message, "data", None)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise NotARelayEvent(f"expected a Pub/Sub message or bytes, not {type(message).__name__}")
    raw_attributes = getattr(message, "attributes", None) or {}
    try:
        attributes = {str(key): str(value) for key, value in raw_attributes.items()}
    except AttributeError:
        raise NotARelayEvent("message attributes are not a mapping") from None
    return bytes(data), attributes


def relay_callback(
    handler: Callable[[RelayEvent], object],
    *,
    project: str | None = None,
    ack_timeout: float = ACK_TIMEOUT_SECONDS,
) -> Callable[[Message], Outcome]:
    """A streaming-pull callback that runs `handler` on each event, then acknowledges it.

    - The handler returns: the message is acknowledged with `ack_with_response` and the result
      awaited. With exactly-once delivery on the subscription, a confirmed ack is final: Pub/Sub
      will not deliver the message again. A failed one (`AcknowledgeError`: the ack id expired
      or was superseded, a failed precondition; or no answer within `ack_timeout`) is logged
      as a WARNING "redelivery possible" with the event id, never raised into the stream.
    - The handler raises: the message is nacked (redelivered after the subscription's retry
      backoff, dead-lettered after its `max_delivery_attempts`), logged as an ERROR.
    - The message is not one the relay published: nacked too, so the dead-letter policy sets it
      aside; logged as an ERROR.

    So the handler may run more than once for one event (a failed ack, a crash before the ack,
    an ack deadline that expired while it ran; without exactly-once delivery, at any time) and
    must be idempotent on `event.id`.

    Log records carry the delivery's trace when the message has a `traceparent` attribute:
    Cloud Logging's `logging.googleapis.com/trace` (`projects/<project>/traces/<trace id>`),
    `spanId` and `trace_sampled`, so the delivery, the relay and the handler show as one
    trace. With `webhook_relay.logs.configure()` (JSON lines on stdout, as Cloud Run and GKE
    read them), the handler's own log lines carry them too. `project` is the project whose
    Cloud Trace holds the trace (the relay's); default `GOOGLE_CLOUD_PROJECT`.
    """
    project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")

    def callback(message: Message) -> Outcome:
        return _handle(message, handler, project, ack_timeout)

    return callback


def _handle(
    message: Message,
    handler: Callable[[RelayEvent], object],
    project: str | None,
    ack_timeout: float,
) -> Outcome:
    found = trace.parse_traceparent((message.attributes or {}).get(trace.ATTRIBUTE))
    fields: dict[str, Any] = found.log_fields(project) if found is not None else {}
    fields["message_id"] = message.message_id
    if message.delivery_attempt is not None:  # set only with a dead-letter policy
        fields["delivery_attempt"] = message.delivery_attempt
    try:
        event = parse_event(message)
    except NotARelayEvent as error:
        log.error("not a relay event (%s): nacked", error, extra=fields)
        message.nack()
        return "nacked"
    fields |= {"event_id": event.id, "event_type": event.type}
    with logs.bound(fields):
        try:
            handler(event)
        except Exception:
            log.exception("handler failed: nacked, Pub/Sub redelivers it", extra=fields)
            message.nack()
            return "nacked"
    try:
        message.ack_with_response().result(timeout=ack_timeout)
    except Exception as error:  # whatever it was, the stream must go on
        # AcknowledgeError (its error_code: INVALID_ACK_ID, FAILED_PRECONDITION, ...), a
        # TimeoutError, or the library's ValueError for an ack id acknowledged twice.
        from google.cloud.pubsub_v1.subscriber.exceptions import (  # noqa: PLC0415 (see above)
            AcknowledgeError,
        )

        reason = (
            error.error_code.name if isinstance(error, AcknowledgeError) else type(error).__name__
        )
        log.warning(
            "acknowledgement failed (%s): redelivery possible",
            reason,
            extra=fields | {"ack_error": reason},
        )
        return "ack_failed"
    log.info("event handled and acknowledged", extra=fields)
    return "acked"
