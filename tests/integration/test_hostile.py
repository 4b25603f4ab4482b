"""Hostile and broken requests against the relay as served: raw sockets, real server.

What the framework and the server do with a body (buffer it, drain it, choke on its framing)
only shows when functions-framework and gunicorn run for real.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import StartRelay
from tests.integration.harness import RelayServer
from tests.support.signing import headers_v1

pytestmark = pytest.mark.emulators
MIB = 1024 * 1024


def exchange(
    server: RelayServer, head: bytes, body_parts: list[bytes], close_write: bool = False
) -> tuple[int, dict[str, object]]:
    """Send a request as raw bytes while reading the answer, as a client on a slow link."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        answer = bytearray()

        def read() -> None:
            try:
                while chunk := connection.recv(65536):
                    answer.extend(chunk)
            except OSError:
                pass

        reader = threading.Thread(target=read)
        reader.start()
        try:
            connection.sendall(head)
            for part in body_parts:
                connection.sendall(part)
            if close_write:
                connection.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before taking everything: fine
            pass
        reader.join(15)
    header, _, payload = bytes(answer).partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(payload)


def request_head(method: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} / HTTP/1.1", "Host: relay.test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def well_formed() -> dict[str, str]:
    """`webhook-*` headers that pass every check made before the body is read (the entry is
    well-formed but cannot verify): what follows is decided by the body."""
    return {
        "webhook-id": "msg_frame",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": "v1,AA==",
    }


def worker_pid(server: RelayServer) -> int:
    # functions-framework runs gunicorn: the process we started is the arbiter, and the
    # requests are served by its one worker.
    assert server._process is not None
    pid = server._process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the high-water mark: a buffered body cannot hide
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_refused_bodies_do_not_grow_the_worker(start_relay: StartRelay) -> None:
    server = start_relay()
    pid = worker_pid(server)
    server.get()
    before = peak_rss_mib(pid)
    body = b"x" * (32 * MIB)
    refused = [
        ("POST", {"Content-Length": str(len(body))}, 413),  # over the limit, announced
        ("POST", {**well_formed(), "Transfer-Encoding": "chunked"}, 413),  # counted
        ("GET", {"Content-Length": str(len(body))}, 200),
        ("PUT", {"Content-Length": str(len(body))}, 405),
    ]
    for method, headers, expected in refused:
        if "Transfer-Encoding" in headers:
            parts = [b"%x\r\n%s\r\n" % (MIB, body[:MIB])] * 32 + [b"0\r\n\r\n"]
        else:
            parts = [body[i : i + MIB] for i in range(0, len(body), MIB)]
        status, answer = exchange(server, request_head(method, headers), parts)
        assert (status, method) == (expected, method), answer
    # 128 MiB were sent in all; the worker's peak may grow by its own working set, not by them.
    assert peak_rss_mib(pid) - before < 16


def test_oversized_body_is_refused_before_the_client_sends_it(start_relay: StartRelay) -> None:
    server = start_relay()
    head = request_head("POST", {"Content-Length": str(20 * MIB)})
    # 1 MiB of the 20 announced, then nothing: the answer must not wait for the other 19.
    status, answer = exchange(server, head, [b"x" * MIB])
    assert (status, answer["status"]) == (413, "too_large")


@pytest.mark.parametrize(
    ("headers", "parts", "expected"),
    [
        pytest.param({"Content-Length": "100"}, [b"x" * 50], 400, id="truncated"),
        pytest.param(
            {"Transfer-Encoding": "chunked"}, [b"zz\r\nxx\r\n0\r\n\r\n"], 400, id="chunk-size"
        ),
        pytest.param(
            {"Transfer-Encoding": "chunked"}, [b"5\r\nhelloXX0\r\n\r\n"], 400, id="chunk-terminator"
        ),
        pytest.param({"Transfer-Encoding": "chunked"}, [b"5\r\nhel"], 400, id="chunk-cut"),
        pytest.param(
            {"Transfer-Encoding": "chunked"},
            [b"%x\r\n%s\r\n" % (MIB, b"x" * MIB)] * 2 + [b"zz\r\n"],
            413,
            id="over-limit-then-broken",
        ),
    ],
)
def test_broken_framing_is_a_client_error_without_a_trace(
    start_relay: StartRelay, headers: dict[str, str], parts: list[bytes], expected: int
) -> None:
    server = start_relay()
    head = request_head("POST", {**well_formed(), **headers})
    status, answer = exchange(server, head, parts, close_write=True)
    assert status == expected
    assert answer["status"] == ("bad_request" if expected == 400 else "too_large")
    logged = [line for line in server.log_lines() if line.get("http_status") == expected]
    assert [line["severity"] for line in logged] == ["WARNING"]
    text = server.log.read_text()
    assert "Traceback" not in text
    assert "stack_trace" not in text


def test_signed_deliveries_of_any_nesting_depth_are_never_answered_503(
    relay: RelayServer, secret: str
) -> None:
    # Near the interpreter's depth limit a body reads fine and its event cannot be encoded
    # (the event wraps it three levels deeper): a 503 there would be retried for 24 h.
    answers = set()
    for depth in range(900, 1000, 3):
        body = b'{"type": "batch.succeeded", "data": ' + b'{"a":' * depth + b"1" + b"}" * depth
        body += b"}"
        sent = relay.post(body, headers_v1(secret, body, webhook_id=f"msg_deep_{depth}"))
        answers.add((sent.status, sent.body["status"]))
    assert answers <= {(200, "accepted"), (200, "quarantined")}
    assert (200, "quarantined") in answers
