"""Structured log lines: one JSON object per line on stdout, as Cloud Logging reads them."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from werkzeug.datastructures import Headers

from webhook_relay.logs import TRACE_KEY, JsonHandler, emit, trace

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return [json.loads(line) for line in out.splitlines()]


def test_emit_writes_one_json_line_with_severity_and_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emit("WARNING", "unauthorized", status="unauthorized", http_status=401)
    assert lines(capsys) == [
        {
            "severity": "WARNING",
            "message": "unauthorized",
            "status": "unauthorized",
            "http_status": 401,
        }
    ]


def test_emit_leaves_out_none_fields(capsys: pytest.CaptureFixture[str]) -> None:
    emit("INFO", "ok", webhook_id=None, detail=None)
    assert lines(capsys) == [{"severity": "INFO", "message": "ok"}]


def test_emit_message_with_newline_stays_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    emit("INFO", "two\nlines", field="a\nb")
    assert len(lines(capsys)) == 1


def test_emit_writes_non_json_values_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    emit("INFO", "x", value={1, 2} - {1, 2}, other=object)
    assert lines(capsys)[0]["value"] == "set()"


def test_emit_never_raises_on_text_without_utf8_form(capsys: pytest.CaptureFixture[str]) -> None:
    # emit runs after the answer is built, outside its error handling: raising would be a 500.
    emit("INFO", "x", event_type="batch.\ud800")
    assert lines(capsys)[0]["event_type"] == "batch.\ud800"


def test_emit_unicode_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    emit("INFO", "x", webhook_id="msg_é€😀")
    assert lines(capsys)[0]["webhook_id"] == "msg_é€😀"


def test_trace_from_traceparent() -> None:
    headers = Headers({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    assert trace(headers, "p-1") == f"projects/p-1/traces/{TRACE_ID}"


def test_trace_from_x_cloud_trace_context() -> None:
    headers = Headers({"X-Cloud-Trace-Context": f"{TRACE_ID.upper()}/1;o=1"})
    assert trace(headers, "p-1") == f"projects/p-1/traces/{TRACE_ID}"


def test_trace_prefers_traceparent() -> None:
    headers = Headers(
        {
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
            "X-Cloud-Trace-Context": f"{'a' * 32}/1",
        }
    )
    assert trace(headers, "p-1") == f"projects/p-1/traces/{TRACE_ID}"


def test_malformed_traceparent_falls_back_to_cloud_trace_header() -> None:
    headers = Headers({"traceparent": "garbage", "X-Cloud-Trace-Context": f"{'a' * 32}"})
    assert trace(headers, "p-1") == f"projects/p-1/traces/{'a' * 32}"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"traceparent": "00-xyz-00f067aa0ba902b7-01"}, id="bad-traceparent"),
        pytest.param({"X-Cloud-Trace-Context": "1234/5"}, id="short-cloud-trace"),
    ],
)
def test_no_trace_without_a_valid_header(headers: dict[str, str]) -> None:
    assert trace(Headers(headers), "p-1") is None


def test_no_trace_without_a_project() -> None:
    headers = Headers({"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    assert trace(headers, None) is None


def test_json_handler_keeps_extra_fields_and_stack_trace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("tests.logs.handler")
    logger.propagate = False
    logger.addHandler(JsonHandler())
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed %s", "publish", extra={"webhook_id": "msg_1"})
    finally:
        logger.handlers.clear()
        logger.propagate = True
    [entry] = lines(capsys)
    assert entry["severity"] == "ERROR"
    assert entry["message"] == "failed publish"
    assert entry["webhook_id"] == "msg_1"
    assert entry["logger"] == "tests.logs.handler"
    assert "RuntimeError: boom" in entry["stack_trace"]
    assert TRACE_KEY not in entry
