"""A body trickled past the request's budget, against the relay as served (functions-framework,
gunicorn, a real socket): only there does a blocking read of the body really block.

gunicorn's body reader loops over recv() until it has what was asked for, so a client sending
a byte now and then is never stopped by a socket timeout; the relay must answer in time anyway,
and leave no worker thread behind reading or draining that body.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PROJECT, RelayServer
from tests.support.signing import headers_v1

BODY = json.dumps({"type": "batch.succeeded", "data": {"id": "batch_slow"}}).encode().ljust(200)
BUDGET_SECONDS = 1.5
PAUSE = 0.25  # between two bytes of the body: the whole would take 50 s


@pytest.fixture
def short_budget_relay(secret: str) -> Iterator[RelayServer]:
    # Two worker threads, as a deployed instance has several: both get a trickling client.
    # No emulators: these requests never get as far as Firestore.
    env = {
        "WEBHOOK_SIGNING_SECRETS": secret,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "THREADS": "2",
        "TEST_BUDGET_SECONDS": str(BUDGET_SECONDS),
    }
    server = RelayServer(env, source=Path(__file__).with_name("short_budget_main.py"))
    try:
        yield server.start()
    finally:
        server.stop()


class Trickler:
    """Sends the headers at once, then the body a byte every PAUSE, until told to stop."""

    def __init__(self, server: RelayServer, headers: dict[str, str]) -> None:
        self.connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        lines = ["POST / HTTP/1.1", "Host: relay.test", *(f"{k}: {v}" for k, v in headers.items())]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.answer = bytearray()
        self.answered_after: float | None = None
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._send), threading.Thread(target=self._read)]

    def start(self) -> Trickler:
        self.started = time.monotonic()
        self.connection.sendall(self.head)
        for thread in self._threads:
            thread.start()
        return self

    def _send(self) -> None:
        for byte in BODY:
            if self.stop.wait(PAUSE):
                return
            try:
                self.connection.sendall(bytes([byte]))
            except OSError:  # the server closed the connection: it is done with us
                return

    def _read(self) -> None:
        try:
            while chunk := self.connection.recv(65536):
                if not self.answer:
                    self.answered_after = time.monotonic() - self.started
                self.answer.extend(chunk)
        except OSError:
            pass

    def finish(self) -> tuple[int, dict[str, object]]:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)
        self.connection.close()
        header, _, payload = bytes(self.answer).partition(b"\r\n\r\n")
        return int(header.split(b" ", 2)[1]), json.loads(payload)


def test_body_trickled_past_the_budget_is_400_in_time_and_holds_no_worker(
    short_budget_relay: RelayServer, secret: str
) -> None:
    server = short_budget_relay
    headers = headers_v1(secret, BODY, webhook_id="msg_trickle") | {
        "Content-Length": str(len(BODY))
    }
    tricklers = [Trickler(server, headers).start() for _ in range(2)]
    for trickler in tricklers:
        deadline = time.monotonic() + BUDGET_SECONDS + 5
        while trickler.answered_after is None and time.monotonic() < deadline:
            time.sleep(0.05)
    # Both answered while still sending (the body would take 50 s); and with both clients
    # still connected, both worker threads are free: a liveness probe is answered at once
    # (not after gunicorn's 5 s drain of an unread body).
    assert [t.answered_after is not None for t in tricklers] == [True, True]
    with urllib.request.urlopen(server.url, timeout=3) as probe:
        assert probe.status == 200
    assert all(not t.stop.is_set() for t in tricklers)
    answers = [trickler.finish() for trickler in tricklers]
    expected = {
        "status": "bad_request",
        "webhook_id": "msg_trickle",
        "detail": "body not received in time",
    }
    assert answers == [(400, expected)] * 2
    logged = [line for line in server.log_lines() if line.get("http_status") == 400]
    assert [line["severity"] for line in logged] == ["WARNING"] * 2
    assert "Traceback" not in server.log.read_text()


def test_body_sent_within_the_budget_is_read_as_usual(
    short_budget_relay: RelayServer, secret: str
) -> None:
    # A client pausing mid-body, but finishing within the budget: no 400, the body is read
    # whole (the answer is 503 only because this relay has no Firestore to talk to).
    server = short_budget_relay
    headers = headers_v1(secret, BODY, webhook_id="msg_pause") | {"Content-Length": str(len(BODY))}
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        lines = ["POST / HTTP/1.1", "Host: relay.test", *(f"{k}: {v}" for k, v in headers.items())]
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + BODY[:100])
        time.sleep(BUDGET_SECONDS / 3)
        connection.sendall(BODY[100:])
        answer = bytearray()
        while chunk := connection.recv(65536):
            answer.extend(chunk)
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    payload = bytes(answer).partition(b"\r\n\r\n")[2]
    assert json.loads(payload).get("detail") != "body not received in time"
