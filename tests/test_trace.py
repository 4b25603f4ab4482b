"""The delivery's trace context, read strictly: W3C `traceparent` first, else Google's
`X-Cloud-Trace-Context`; what travels on the message is always a valid W3C traceparent."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from webhook_relay.logs import trace as log_trace
from webhook_relay.trace import (
    SAMPLED_KEY,
    SPAN_KEY,
    TRACE_KEY,
    context,
    parse_traceparent,
    traceparent,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{SPAN_ID}-01"


def test_valid_traceparent_is_passed_on() -> None:
    assert traceparent(Headers({"traceparent": VALID})) == VALID


def test_traceparent_keeps_its_flags() -> None:
    value = f"00-{TRACE_ID}-{SPAN_ID}-00"
    assert traceparent(Headers({"traceparent": value})) == value


def test_traceparent_wins_over_the_cloud_header() -> None:
    headers = Headers({"traceparent": VALID, "X-Cloud-Trace-Context": f"{'a' * 32}/1;o=1"})
    assert traceparent(headers) == VALID


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"{TRACE_ID}/1;o=1", f"00-{TRACE_ID}-0000000000000001-01"),
        (f"{TRACE_ID}/1;o=0", f"00-{TRACE_ID}-0000000000000001-00"),
        (f"{TRACE_ID}/1", f"00-{TRACE_ID}-0000000000000001-00"),
        (f"{TRACE_ID.upper()}/255;o=1", f"00-{TRACE_ID}-00000000000000ff-01"),
        (f"{TRACE_ID}/18446744073709551615;o=1", f"00-{TRACE_ID}-ffffffffffffffff-01"),
        (f"{TRACE_ID}/0123;o=1", f"00-{TRACE_ID}-000000000000007b-01"),
        (f"{TRACE_ID}/2;o=2", f"00-{TRACE_ID}-0000000000000002-00"),
    ],
)
def test_derived_from_x_cloud_trace_context(header: str, expected: str) -> None:
    assert traceparent(Headers({"X-Cloud-Trace-Context": header})) == expected


def test_invalid_traceparent_falls_back_to_the_cloud_header() -> None:
    headers = Headers(
        {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01", "X-Cloud-Trace-Context": f"{TRACE_ID}/7;o=1"}
    )
    assert traceparent(headers) == f"00-{TRACE_ID}-0000000000000007-01"


@pytest.mark.parametrize(
    "value",
    [
        f"01-{TRACE_ID}-{SPAN_ID}-01",  # only version 00 is read
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # lowercase hex only
        f"00-{TRACE_ID}-{SPAN_ID.upper()}-01",
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID}-{SPAN_ID}-1",
        f"00-{TRACE_ID}-{SPAN_ID}-0g",
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",  # version 00 has exactly four fields
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        "",
        "garbage",
    ],
)
def test_invalid_traceparent_alone_gives_none(value: str) -> None:
    assert traceparent(Headers({"traceparent": value})) is None
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "header",
    [
        f"{TRACE_ID}",  # no span: a traceparent must name its parent
        f"{TRACE_ID}/",
        f"{TRACE_ID}/0;o=1",  # all-zero span
        f"{TRACE_ID}/18446744073709551616;o=1",  # beyond 64 bits
        f"{TRACE_ID}/12x;o=1",
        f"{TRACE_ID}/-1;o=1",
        f"{TRACE_ID}/1;o=1;extra",
        f"{'0' * 32}/1;o=1",  # all-zero trace id
        f"{TRACE_ID[:-1]}/1;o=1",
        f"{TRACE_ID}g/1;o=1",
        "1234/5",
        "",
    ],
)
def test_invalid_cloud_header_gives_none(header: str) -> None:
    assert traceparent(Headers({"X-Cloud-Trace-Context": header})) is None


def test_no_header_gives_none() -> None:
    assert traceparent(Headers()) is None


def test_surrounding_white_space_is_ignored() -> None:
    assert traceparent(Headers({"traceparent": f" {VALID}\t"})) == VALID


def test_log_trace_and_message_trace_name_the_same_trace() -> None:
    for headers in (
        Headers({"traceparent": VALID}),
        Headers({"X-Cloud-Trace-Context": f"{TRACE_ID.upper()}/5;o=1"}),
    ):
        carried = parse_traceparent(traceparent(headers))
        assert carried is not None
        assert log_trace(headers, "p-1") == f"projects/p-1/traces/{carried.trace_id}"


def test_log_trace_ignores_an_all_zero_traceparent() -> None:
    # The old regex took any 32 hex digits, zeros included: an invalid trace id in the log.
    headers = Headers({"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"})
    assert log_trace(headers, "p-1") is None


def test_log_fields_for_cloud_logging() -> None:
    found = parse_traceparent(VALID)
    assert found is not None
    assert found.log_fields("p-1") == {
        TRACE_KEY: f"projects/p-1/traces/{TRACE_ID}",
        SPAN_KEY: SPAN_ID,
        SAMPLED_KEY: True,
    }
    assert found.log_fields(None) == {}


def test_cloud_header_without_span_still_names_the_trace_for_logs() -> None:
    found = context(Headers({"X-Cloud-Trace-Context": TRACE_ID}))
    assert found is not None
    assert found.log_fields("p-1") == {
        TRACE_KEY: f"projects/p-1/traces/{TRACE_ID}",
        SAMPLED_KEY: False,
    }
