"""HTTP in and out: methods, the body limit, the JSON answer, and one log line per request.

Every path ends in a documented answer. An exception nobody expected is still answered 503
(retry), never 500: the delivery may be authentic, and a retry loses nothing.

One flow per POST: headers, what they alone decide (form, timestamp, a JWT), the body (within
the request's budget), the signature over it, then the relay.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import flask

from .deadline import REQUEST_BUDGET_SECONDS, Deadline
from .errors import BadRequest, RelayError, TooLarge, Unauthorized, Unavailable
from .logs import TRACE_KEY, emit, trace
from .relay import Outcome
from .trace import traceparent
from .verify import MAX_ID_BYTES, Delivery, Head, claimed_scheme, header_text, read_head

log = logging.getLogger(__name__)
READ_CHUNK = 64 * 1024
ALLOWED = "GET, HEAD, POST"


class Pipeline(Protocol):
    """What the HTTP layer needs: check the headers, then the delivery, then relay it."""

    max_body_bytes: int
    project: str | None

    def check_head(self, head: Head) -> str | None: ...

    def verify(self, delivery: Delivery) -> str: ...

    def deliver(
        self, delivery: Delivery, scheme: str, deadline: Deadline, traceparent: str | None
    ) -> Outcome: ...


@dataclass
class _Answer:
    http_status: int
    status: str
    detail: str | None = None
    retry_after: int | None = None
    log: dict[str, Any] = field(default_factory=dict)


def handle(
    request: flask.Request, pipeline: Pipeline, budget_seconds: float = REQUEST_BUDGET_SECONDS
) -> flask.Response:
    started = time.monotonic()
    deadline = Deadline(budget_seconds)
    webhook_id = _webhook_id(request)
    try:
        answer = _answer(request, pipeline, deadline)
    except RelayError as error:
        answer = _Answer(error.http_status, error.status, error.detail)
        if isinstance(error, Unauthorized):  # which scheme is failing: a label for the alert
            answer.log["signature"] = claimed_scheme(request.headers.get("webhook-signature"))
            if error.hint:
                answer.log["hint"] = error.hint
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
    message = f"{answer.status} {answer.log.get('event_type') or ''}".rstrip()
    if answer.log.get("hint"):  # what the operator can change: in the summary line too
        message += f" ({answer.log['hint']})"
    emit(
        severity,
        message,
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
    limit = pipeline.max_body_bytes
    # Content-Length refuses most oversized bodies unread.
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"body is larger than {limit} bytes")
    head = read_head(request.headers)
    proven = pipeline.check_head(head)  # a JWT is proven here; v1/v1a entries cover the body
    delivery = head.with_body(_read_body(request, limit, deadline))
    scheme = proven or pipeline.verify(delivery)
    outcome = pipeline.deliver(delivery, scheme, deadline, traceparent(request.headers))
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


def _read_body(request: flask.Request, limit: int, deadline: Deadline) -> bytes:
    """The whole body, by the request's deadline: a client trickling it gets 400 in time."""
    watch = _WATCHDOG.watch(request.environ.get("gunicorn.socket"), deadline)
    try:
        return _read_stream(request, limit, deadline)
    except BadRequest:
        if watch.fired or deadline.remaining() <= 0:
            raise _late() from None
        raise
    finally:
        watch.release()


def _late() -> BadRequest:
    return BadRequest("body not received in time")


def _read_stream(request: flask.Request, limit: int, deadline: Deadline) -> bytes:
    # Counting while reading catches chunked bodies and Content-Lengths that lie.
    declared = request.content_length
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
        if deadline.remaining() <= 0:  # where no watchdog can reach the socket
            raise _late()
        chunks.append(chunk)


@dataclass(eq=False)
class _Watch:
    sock: socket.socket | None
    at: float
    released: bool = False
    fired: bool = False

    def release(self) -> None:
        with _WATCHDOG.lock:
            self.released = True


class _Watchdog:
    """Shuts the read side of a request's socket when its body is not in by the deadline.

    A socket timeout bounds each recv(), not a read: gunicorn's body reader loops over
    recv() until it has what was asked for, so a client sending a byte a second would hold
    the read (and the worker thread) for as long as it cares to. Shutting the read side
    wakes the blocked recv() with end-of-file; the answer still goes out on the write side,
    and gunicorn then closes the connection instead of draining it. One thread for every
    request of the instance, started on first use.
    """

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: object, deadline: Deadline) -> _Watch:
        # Only a plain socket: shutting an SSL socket's read side would end its TLS session.
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            return _Watch(None, 0.0)
        watch = _Watch(sock, time.monotonic() + deadline.remaining())
        with self.lock:
            heapq.heappush(self._heap, (watch.at, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="body-deadline", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:
                self.lock.notify()
        return watch

    def _run(self) -> None:
        with self.lock:
            while True:
                while self._heap and self._heap[0][2].released:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self.lock.wait()
                    continue
                at, _, watch = self._heap[0]
                wait = at - time.monotonic()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                watch.fired = True
                if watch.sock is not None:
                    with suppress(OSError):  # already closed: nothing left to stop
                        watch.sock.shutdown(socket.SHUT_RD)


_WATCHDOG = _Watchdog()


def _webhook_id(request: flask.Request) -> str | None:
    """The id to echo in the answer: only a readable one the request really carried."""
    try:
        value = header_text(request.headers, "webhook-id")
    except BadRequest:
        return None
    if not value or len(value.encode()) > MAX_ID_BYTES:
        return None
    return value
