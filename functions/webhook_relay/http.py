"""HTTP in and out: methods, the body limit, the JSON answer, and one log line per request.

Every path ends in a documented answer. An exception nobody expected is still answered 503
(retry), never 500: the delivery may be authentic, and a retry loses nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import flask

from .deadline import Deadline
from .errors import BadRequest, RelayError, TooLarge, Unauthorized, Unavailable
from .logs import TRACE_KEY, emit, trace
from .relay import Outcome
from .verify import MAX_ID_BYTES, Delivery, claimed_scheme, header_text, read_delivery

log = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024
ALLOWED = "GET, HEAD, POST"


class Pipeline(Protocol):
    """What the HTTP layer needs: check a delivery, then relay it."""

    max_body_bytes: int
    project: str | None

    def verify(self, delivery: Delivery) -> str: ...

    def deliver(self, delivery: Delivery, scheme: str, deadline: Deadline) -> Outcome: ...


@dataclass
class _Answer:
    http_status: int
    status: str
    detail: str | None = None
    retry_after: int | None = None
    log: dict[str, Any] = field(default_factory=dict)


def handle(request: flask.Request, pipeline: Pipeline) -> flask.Response:
    started = time.monotonic()
    deadline = Deadline()
    webhook_id = _webhook_id(request)
    try:
        answer = _answer(request, pipeline, deadline)
    except RelayError as error:
        answer = _Answer(error.http_status, error.status, error.detail)
        if isinstance(error, Unauthorized):  # which scheme is failing: a label for the alert
            answer.log["signature"] = claimed_scheme(request.headers.get("webhook-signature"))
        if isinstance(error, Unavailable):
            answer.retry_after = error.retry_after
    except Exception as exc:
        log.exception("unexpected error; answered 503 so the sender retries")
        answer = _Answer(503, Unavailable.status, f"internal error ({type(exc).__name__})", 5)

    if request.method not in ("GET", "HEAD"):  # liveness probes would drown the log
        _log(answer, webhook_id, started, trace(request.headers, pipeline.project))
    return _response(answer, webhook_id)


def _response(answer: _Answer, webhook_id: str | None) -> flask.Response:
    body: dict[str, Any] = {"status": answer.status}
    if webhook_id is not None:
        body["webhook_id"] = webhook_id
    if answer.detail:
        body["detail"] = answer.detail
    payload = json.dumps(body).encode()
    # An iterator, not bytes, makes a "streamed" response, for which functions-framework's
    # after-request hook skips `request.get_data()`: that would buffer the rest of the upload,
    # so a refused 64 MiB body would cost 64 MiB of memory and delay the answer until sent.
    # The server then discards at most a little of the unread body before closing.
    response = flask.Response(iter([payload]), answer.http_status, mimetype="application/json")
    response.headers["Content-Length"] = str(len(payload))
    if answer.retry_after is not None:
        response.headers["Retry-After"] = str(answer.retry_after)
    if answer.http_status == 405:
        response.headers["Allow"] = ALLOWED
    response.headers["Cache-Control"] = "no-store"
    return response


def _log(answer: _Answer, webhook_id: str | None, started: float, trace_name: str | None) -> None:
    code = answer.http_status
    severity = "INFO" if code < 400 else "WARNING" if code < 500 else "ERROR"
    emit(
        severity,
        f"{answer.status} {answer.log.get('event_type') or ''}".rstrip(),
        status=answer.status,
        http_status=code,
        webhook_id=webhook_id,
        detail=answer.detail,
        latency_ms=round((time.monotonic() - started) * 1000, 2),
        **{TRACE_KEY: trace_name},
        **answer.log,
    )


def _answer(request: flask.Request, pipeline: Pipeline, deadline: Deadline) -> _Answer:
    if request.method in ("GET", "HEAD"):
        return _Answer(200, "ok")
    if request.method != "POST":
        return _Answer(405, "method_not_allowed", f"use POST (allowed: {ALLOWED})")
    body = _read_body(request, pipeline.max_body_bytes)
    delivery = read_delivery(request.headers, body)
    scheme = pipeline.verify(delivery)
    outcome = pipeline.deliver(delivery, scheme, deadline)
    return _Answer(
        outcome.http_status,
        outcome.status,
        "another request is publishing this delivery" if outcome.status == "in_flight" else None,
        outcome.retry_after,
        {
            "event_type": outcome.event_type,
            "signature": scheme,
            "topic": outcome.topic,
            "message_id": outcome.message_id,
            "attempts": outcome.attempts,
        },
    )


def _read_body(request: flask.Request, limit: int) -> bytes:
    # Content-Length refuses most oversized bodies unread; counting while reading catches
    # chunked bodies and lies.
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = request.stream.read(min(READ_CHUNK, limit + 1 - size))
        except Exception as exc:
            # Only the client's bytes can fail here: a truncated body, a Content-Length that
            # lies (werkzeug's ClientDisconnected), a broken chunked encoding (the server's
            # parse errors). The sender's problem, not ours: 400, and no retry will help.
            raise BadRequest(
                f"request body not received completely ({type(exc).__name__})"
            ) from None
        if not chunk:
            # The server may hand over a short body as if complete when the client stops
            # sending: a Content-Length that lies is caught here.
            if declared is not None and size < declared:
                raise BadRequest("request body is shorter than its Content-Length")
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body is larger than {limit} bytes")
        chunks.append(chunk)


def _webhook_id(request: flask.Request) -> str | None:
    """The id to echo in the answer: only a readable one the request really carried."""
    try:
        value = header_text(request.headers, "webhook-id")
    except BadRequest:
        return None
    if not value or len(value.encode()) > MAX_ID_BYTES:
        return None
    return value
