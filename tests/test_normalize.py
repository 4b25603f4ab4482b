"""A verified envelope -> the contract's CloudEvent, data and attributes."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fakes import check_publishable
from webhook_relay.normalize import QUARANTINED, SOURCE, Event, normalize
from webhook_relay.reconcile import JobView, synthesize

WEBHOOK_ID = "msg_2Lh5"
TIMESTAMP = 1_777_888_999  # 2026-05-04T10:03:19Z
TIMESTAMP_RFC3339 = "2026-05-04T10:03:19Z"
ENVELOPE_TIME = "2026-05-04T10:00:00.123Z"


def event_for(envelope: Any, signature: str = "hmac") -> Event:
    return normalize(WEBHOOK_ID, TIMESTAMP, json.dumps(envelope).encode(), signature)


def envelope(event_type: str, data: Any = None, **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": event_type, "version": "v1", "timestamp": ENVELOPE_TIME}
    if data is not None:
        body["data"] = data
    return body | top


CATALOG = [
    # type, data, kind, outcome, terminal, output_uri, file_name, error
    (
        "batch.succeeded",
        {"id": "batch_1", "output_file_uri": "gs://b/results.jsonl"},
        "batch",
        "succeeded",
        True,
        "gs://b/results.jsonl",
        None,
        None,
    ),
    (
        "batch.failed",
        {"id": "batch_1", "error_code": "INVALID_ARGUMENT", "error_message": "bad line 3"},
        "batch",
        "failed",
        True,
        None,
        None,
        {"code": "INVALID_ARGUMENT", "message": "bad line 3"},
    ),
    ("batch.expired", {"id": "batch_1"}, "batch", "expired", True, None, None, None),
    ("batch.cancelled", {"id": "batch_1"}, "batch", "cancelled", True, None, None, None),
    (
        "interaction.requires_action",
        {"id": "int_1"},
        "interaction",
        "requires_action",
        False,
        None,
        None,
        None,
    ),
    ("interaction.completed", {"id": "int_1"}, "interaction", "completed", True, None, None, None),
    (
        "interaction.failed",
        {"id": "int_1", "error_code": 13, "error_message": "internal"},
        "interaction",
        "failed",
        True,
        None,
        None,
        {"code": 13, "message": "internal"},
    ),
    ("interaction.cancelled", {"id": "int_1"}, "interaction", "cancelled", True, None, None, None),
    (
        "video.generated",
        {"id": "vid_1", "output_file_uri": "gs://b/v.mp4", "file_name": "files/v"},
        "video",
        "generated",
        True,
        "gs://b/v.mp4",
        "files/v",
        None,
    ),
]


@pytest.mark.parametrize(
    ("event_type", "data", "kind", "outcome", "terminal", "output_uri", "file_name", "error"),
    CATALOG,
    ids=[row[0] for row in CATALOG],
)
def test_catalog_type(
    event_type: str,
    data: dict[str, Any],
    kind: str,
    outcome: str,
    terminal: bool,
    output_uri: str | None,
    file_name: str | None,
    error: dict[str, Any] | None,
) -> None:
    delivered = envelope(event_type, data)
    event = event_for(delivered)
    assert event.cloudevent == {
        "specversion": "1.0",
        "id": WEBHOOK_ID,
        "source": SOURCE,
        "type": event_type,
        "subject": data["id"],
        "time": ENVELOPE_TIME,
        "datacontenttype": "application/json",
        "signature": "hmac",
        "data": {
            "kind": kind,
            "outcome": outcome,
            "terminal": terminal,
            "job_id": data["id"],
            "output_uri": output_uri,
            "file_name": file_name,
            "error": error,
            "user_metadata": None,
            "gemini": delivered,
        },
    }
    assert not event.quarantined


def test_video_uri_is_an_alias_of_output_file_uri() -> None:
    event = event_for(envelope("video.generated", {"id": "v", "video_uri": "gs://b/v.mp4"}))
    assert event.cloudevent["data"]["output_uri"] == "gs://b/v.mp4"


def test_output_file_uri_wins_over_video_uri() -> None:
    data = {"id": "v", "output_file_uri": "gs://b/a.mp4", "video_uri": "gs://b/b.mp4"}
    assert event_for(envelope("video.generated", data)).cloudevent["data"]["output_uri"] == (
        "gs://b/a.mp4"
    )


def test_inline_batch_has_null_output_uri() -> None:
    assert (
        event_for(envelope("batch.succeeded", {"id": "b"})).cloudevent["data"]["output_uri"] is None
    )


def test_nested_error_object_is_carried() -> None:
    data = {"id": "b", "error": {"code": 3, "message": "x", "details": []}}
    assert event_for(envelope("batch.failed", data)).cloudevent["data"]["error"] == {
        "code": 3,
        "message": "x",
    }


def test_user_metadata_at_top_level() -> None:
    delivered = envelope("batch.succeeded", {"id": "b"}, user_metadata={"order": 7})
    assert event_for(delivered).cloudevent["data"]["user_metadata"] == {"order": 7}


def test_user_metadata_in_data() -> None:
    delivered = envelope("batch.succeeded", {"id": "b", "user_metadata": {"order": 8}})
    assert event_for(delivered).cloudevent["data"]["user_metadata"] == {"order": 8}


def test_gemini_is_the_envelope_verbatim_with_unknown_fields() -> None:
    delivered = envelope("batch.succeeded", {"id": "b", "new_field": [1, {"x": None}]}, extra=True)
    assert event_for(delivered).cloudevent["data"]["gemini"] == delivered


def test_unknown_type_is_other_outcome_after_last_dot_and_terminal() -> None:
    data = event_for(envelope("tuning.job.succeeded", {"id": "t"})).cloudevent["data"]
    assert (data["kind"], data["outcome"], data["terminal"]) == ("other", "succeeded", True)


def test_type_without_dot_is_other_with_itself_as_outcome() -> None:
    data = event_for(envelope("ping")).cloudevent["data"]
    assert (data["kind"], data["outcome"], data["terminal"]) == ("other", "ping", True)


def test_family_without_a_dot_is_no_kind_of_its_own() -> None:
    # Routing's `batch.*` does not match `batch`: neither does the kind.
    assert event_for(envelope("batch", {"id": "b"})).cloudevent["data"]["kind"] == "other"


def test_delivered_relay_type_is_an_unknown_type_not_ours() -> None:
    event = event_for(envelope(QUARANTINED, {"id": "x"}))
    assert not event.quarantined
    data = event.cloudevent["data"]
    assert (data["kind"], data["outcome"]) == ("other", "quarantined")
    assert data["gemini"]["type"] == QUARANTINED


def test_string_error_is_carried_as_its_message() -> None:
    data = event_for(envelope("batch.failed", {"id": "b", "error": "quota exceeded"}))
    assert data.cloudevent["data"]["error"] == {"code": None, "message": "quota exceeded"}


@pytest.mark.parametrize("event_type", ["ping", "webhook.ping"])
def test_ping_types_are_pings(event_type: str) -> None:
    assert event_for(envelope(event_type)).ping


@pytest.mark.parametrize("event_type", ["batch.succeeded", "pinged", "ping.batch"])
def test_other_types_are_not_pings(event_type: str) -> None:
    assert not event_for(envelope(event_type)).ping


def test_numeric_id_becomes_a_string_subject() -> None:
    event = event_for(envelope("batch.succeeded", {"id": 123}))
    assert (event.subject, event.cloudevent["data"]["job_id"]) == ("123", "123")


def test_no_id_means_no_subject() -> None:
    event = event_for(envelope("batch.succeeded", {"output_file_uri": "gs://b/r"}))
    assert event.subject is None
    assert "subject" not in event.cloudevent
    assert "subject" not in event.attributes()


def test_data_not_an_object_is_not_quarantined() -> None:
    event = event_for(envelope("batch.succeeded", ["not", "an", "object"]))
    assert not event.quarantined
    assert event.cloudevent["data"]["job_id"] is None


# --- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["2026-05-04T10:00:00Z", "2026-05-04T10:00:00.123456789Z", "2026-05-04T12:00:00+02:00"]
)
def test_rfc3339_envelope_timestamp_is_kept(value: str) -> None:
    assert event_for(envelope("batch.succeeded", timestamp=value)).cloudevent["time"] == value


def test_iso_timestamp_with_offset_is_made_rfc3339() -> None:
    event = event_for(envelope("batch.succeeded", timestamp="20260504T120000+0200"))
    assert event.cloudevent["time"] == "2026-05-04T10:00:00Z"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="missing"),
        pytest.param("yesterday", id="not-a-date"),
        pytest.param("2026-05-04T10:00:00", id="no-offset"),
        pytest.param("2026-13-40T10:00:00Z", id="impossible-date"),
        pytest.param(1_777_888_000, id="number"),
    ],
)
def test_missing_or_invalid_envelope_timestamp_falls_back_to_webhook_timestamp(value: Any) -> None:
    delivered = envelope("batch.succeeded")
    if value is not None:
        delivered["timestamp"] = value
    else:
        del delivered["timestamp"]
    assert event_for(delivered).cloudevent["time"] == TIMESTAMP_RFC3339


# --- attributes ----------------------------------------------------------------------------


def test_attributes() -> None:
    event = event_for(envelope("batch.succeeded", {"id": "batch_1"}), signature="jwt")
    assert event.attributes() == {
        "event_type": "batch.succeeded",
        "webhook_id": WEBHOOK_ID,
        "subject": "batch_1",
        "signature": "jwt",
        "content-type": "application/cloudevents+json; charset=utf-8",
        "ce-specversion": "1.0",
        "ce-id": WEBHOOK_ID,
        "ce-source": SOURCE,
        "ce-type": "batch.succeeded",
        "ce-time": ENVELOPE_TIME,
        "ce-subject": "batch_1",
    }


def test_quarantine_attributes_have_no_subject() -> None:
    attributes = normalize(WEBHOOK_ID, TIMESTAMP, b"nope", "hmac").attributes()
    assert attributes["ce-type"] == QUARANTINED
    assert "ce-subject" not in attributes
    assert "subject" not in attributes


def test_data_is_compact_utf8_json_of_the_cloudevent() -> None:
    event = event_for(envelope("batch.succeeded", {"id": "bätch"}))
    assert json.loads(event.data().decode("utf-8")) == event.cloudevent
    assert "bätch".encode() in event.data()


# --- quarantine ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"", "empty body", id="empty"),
        pytest.param(b"not json", "body is not JSON", id="not-json"),
        pytest.param(b"\xff\xfe{", "body is not JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "body is not a JSON object", id="array"),
        pytest.param(b'"batch.succeeded"', "body is not a JSON object", id="string"),
        pytest.param(b'{"data": {}}', "body has no string 'type'", id="no-type"),
        pytest.param(b'{"type": 5}', "body has no string 'type'", id="numeric-type"),
        pytest.param(b'{"type": "  "}', "body has no string 'type'", id="blank-type"),
        pytest.param(b"[" * 100_000, "body is not JSON", id="hostile-nesting"),
    ],
)
def test_unreadable_body_is_quarantined(body: bytes, reason: str) -> None:
    event = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")
    assert event.quarantined
    assert event.cloudevent == {
        "specversion": "1.0",
        "id": WEBHOOK_ID,
        "source": SOURCE,
        "type": QUARANTINED,
        "time": TIMESTAMP_RFC3339,
        "datacontenttype": "application/json",
        "signature": "hmac",
        "data": {"reason": reason, "body_base64": base64.b64encode(body).decode()},
    }
    assert event.attributes() == {
        "event_type": QUARANTINED,
        "webhook_id": WEBHOOK_ID,
        "signature": "hmac",
        "content-type": "application/cloudevents+json; charset=utf-8",
        "ce-specversion": "1.0",
        "ce-id": WEBHOOK_ID,
        "ce-source": SOURCE,
        "ce-type": QUARANTINED,
        "ce-time": TIMESTAMP_RFC3339,
    }


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"type": "batch.succeeded", "data": {"x": NaN}}', id="nan"),
        pytest.param(b'{"type": "batch.succeeded", "data": {"x": -Infinity}}', id="infinity"),
        pytest.param(b'{"type": "batch.succeeded", "data": {"x": 1e999}}', id="overflowing-float"),
    ],
)
def test_body_with_non_json_numbers_is_quarantined(body: bytes) -> None:
    # Python's json reads NaN and Infinity, but they are not JSON: republished as they are,
    # subscribers' JSON parsers would refuse the event.
    event = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")
    assert event.quarantined
    check_publishable(event.data(), event.attributes())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"type": "batch.\\ud800"}', id="in-type"),
        pytest.param(b'{"type": "batch.succeeded", "data": {"id": "\\udfff"}}', id="in-subject"),
        pytest.param(b'{"type": "batch.succeeded", "data": {"x": "\\ud800"}}', id="in-data"),
        pytest.param(b'{"type": "batch.succeeded", "x": "\xed\xa0\x80"}', id="raw-utf8-bytes"),
        pytest.param(
            '{"type": "batch.x", "y": "\ud800"}'.encode("utf-16-le", "surrogatepass"), id="utf-16"
        ),
    ],
)
def test_body_with_unpaired_surrogate_is_quarantined(body: bytes) -> None:
    # `"\ud800"` parses to a string that has no UTF-8 form: the event could never be encoded,
    # and the delivery would get 503 for every retry.
    event = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")
    assert event.quarantined
    check_publishable(event.data(), event.attributes())


def test_paired_surrogate_escapes_are_not_quarantined() -> None:
    event = normalize(WEBHOOK_ID, TIMESTAMP, b'{"type": "batch.\\ud83d\\ude00"}', "hmac")
    assert not event.quarantined
    assert event.type == "batch.\U0001f600"


def test_type_longer_than_a_pubsub_attribute_is_quarantined() -> None:
    event = event_for(envelope("batch." + "x" * 1100))
    assert event.quarantined
    check_publishable(event.data(), event.attributes())


def test_subject_longer_than_a_pubsub_attribute_is_kept_in_data_only() -> None:
    long_id = "b" * 1100
    event = event_for(envelope("batch.succeeded", {"id": long_id}))
    assert event.cloudevent["data"]["job_id"] == long_id
    assert "subject" not in event.attributes()
    check_publishable(event.data(), event.attributes())


def test_body_nested_too_deeply_to_encode_is_quarantined() -> None:
    # The event wraps the envelope three levels deeper than it was read: just under the
    # reader's depth limit (which depends on the stack), the encoder's is passed. Whatever
    # the depth, normalize returns an event, never raises.
    reasons = set()
    for depth in range(800, 1100):
        nested = b'{"a":' * depth + b"1" + b"}" * depth
        body = b'{"type": "batch.succeeded", "data": ' + nested + b"}"
        event = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")
        reasons.add(event.cloudevent["data"].get("reason"))
    assert reasons == {None, "body nests too deeply", "body is not JSON"}


def test_event_over_pubsub_limit_is_quarantined_too_large() -> None:
    # data.id is copied into subject and job_id: a 3.5 MB id makes an 11 MB event.
    body = json.dumps(envelope("batch.succeeded", {"id": "b" * 3_500_000})).encode()
    event = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")
    assert event.quarantined
    assert event.cloudevent["data"]["reason"] == "too_large"
    assert base64.b64decode(event.cloudevent["data"]["body_base64"]) == body
    check_publishable(event.data(), event.attributes())


def test_quarantined_body_over_pubsub_limit_is_cut_to_fit() -> None:
    body = b"\xff" * 9_000_000  # not JSON, and 12 MB once base64-encoded
    event = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")
    assert event.cloudevent["data"]["reason"] == "too_large"
    kept = base64.b64decode(event.cloudevent["data"]["body_base64"])
    assert body.startswith(kept)
    assert len(kept) > 7_000_000
    check_publishable(event.data(), event.attributes())


# --- user_metadata attributes (contract: Published message, metadata attributes) ----------


def metadata_attributes(metadata: Any, where: str = "data") -> dict[str, str]:
    body = (
        envelope("batch.succeeded", {"id": "b1", "user_metadata": metadata})
        if where == "data"
        else envelope("batch.succeeded", {"id": "b1"}, user_metadata=metadata)
    )
    event = event_for(body)
    check_publishable(event.data(), event.attributes())
    return {k: v for k, v in event.attributes().items() if k.startswith("um_")}


@pytest.mark.parametrize("where", ["data", "top"])
def test_scalar_metadata_is_mirrored_as_json_text(where: str) -> None:
    metadata = {"team": "search", "n": 3, "ok": True, "off": False, "ratio": 2.5, "big": 1e100}
    assert metadata_attributes(metadata, where) == {
        "um_team": "search",
        "um_n": "3",
        "um_ok": "true",
        "um_off": "false",
        "um_ratio": "2.5",
        "um_big": "1e+100",
    }


def test_metadata_number_keeps_its_json_type() -> None:
    body = b'{"type":"batch.succeeded","data":{"id":"b1","user_metadata":{"i":3,"f":3.0,"n":-0}}}'
    attributes = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac").attributes()
    assert (attributes["um_i"], attributes["um_f"], attributes["um_n"]) == ("3", "3.0", "0")


def test_metadata_string_limit_is_256_bytes_not_characters() -> None:
    metadata = {"at": "a" * 256, "over": "a" * 257, "wide": "é" * 128, "wider": "é" * 129}
    attributes = metadata_attributes(metadata)
    assert attributes["um_at"] == "a" * 256
    assert attributes["um_wide"] == "é" * 128  # 256 bytes
    assert attributes["um_skipped"] == "over,wider"
    assert "um_over" not in attributes
    assert "um_wider" not in attributes


def test_empty_string_is_mirrored() -> None:
    assert metadata_attributes({"tag": ""}) == {"um_tag": ""}


def test_nested_null_and_long_numbers_are_skipped() -> None:
    huge = int("9" * 300)  # Python reads it from JSON; its text is longer than 256 bytes
    metadata = {"obj": {"a": 1}, "arr": [1], "none": None, "huge": huge, "team": "ads"}
    assert metadata_attributes(metadata) == {
        "um_team": "ads",
        "um_skipped": "obj,arr,none,huge",
    }


@pytest.mark.parametrize(
    "key", ["", "a-b", "a.b", "a b", "é", "k" * 65, "a\nb", "\uff41", "\u0663"], ids=repr
)
def test_keys_outside_the_allowed_shape_are_skipped(key: str) -> None:
    attributes = metadata_attributes({key: "x", "ok_1": "y"})
    assert attributes == {"um_ok_1": "y", "um_skipped": key}


def test_key_of_64_characters_is_mirrored() -> None:
    key = "K_9" + "k" * 61
    assert metadata_attributes({key: "v"}) == {f"um_{key}": "v"}


def test_at_most_eight_keys_in_delivered_order() -> None:
    # Keys in an order a sorted() or hash order would not give: the delivered JSON's order.
    keys = ["z9", "a1", "m5", "b2", "y8", "c3", "x7", "d4", "w6", "e0"]
    body = json.dumps(
        {"type": "batch.succeeded", "data": {"id": "b1", "user_metadata": {k: k for k in keys}}}
    ).encode()
    attributes = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac").attributes()
    mirrored = [
        k.removeprefix("um_") for k in attributes if k.startswith("um_") and k != "um_skipped"
    ]
    assert mirrored == keys[:8]
    assert attributes["um_skipped"] == "w6,e0"


def test_skipped_keys_do_not_count_towards_the_eight() -> None:
    metadata = {"nested": {}, **{f"k{i}": i for i in range(8)}, "late": 1}
    attributes = metadata_attributes(metadata)
    assert [k for k in attributes if k != "um_skipped"] == [f"um_k{i}" for i in range(8)]
    assert attributes["um_skipped"] == "nested,late"


def test_key_named_skipped_never_overwrites_the_skip_list() -> None:
    assert metadata_attributes({"skipped": "yes", "team": "ads"}) == {
        "um_team": "ads",
        "um_skipped": "skipped",
    }
    attributes = metadata_attributes({"nested": [], "skipped": "no"})
    assert attributes == {"um_skipped": "nested,skipped"}


def test_skip_list_is_cut_at_a_whole_name_within_1024_bytes() -> None:
    names = [f"{i:03d}-" + "n" * 95 for i in range(30)]  # 100 bytes each, shape not allowed
    skipped = metadata_attributes(dict.fromkeys(names, 1))["um_skipped"]
    assert len(skipped.encode()) <= 1024
    assert skipped == ",".join(names[:10])  # 10 names and 9 commas: 1009 bytes; 11 would not fit


def test_skip_list_of_one_name_longer_than_an_attribute_is_cut_at_a_character() -> None:
    name = "é" * 600  # 1200 bytes
    skipped = metadata_attributes({name: 1, "short-one": 2})["um_skipped"]
    assert len(skipped.encode()) <= 1024
    assert skipped == "é" * 512


def test_many_long_keys_keep_the_message_publishable() -> None:
    metadata = {"k" * 5000 + str(i): "v" * 5000 for i in range(50)} | {"team": "search"}
    event = event_for(envelope("batch.succeeded", {"id": "b1", "user_metadata": metadata}))
    attributes = event.attributes()
    check_publishable(event.data(), attributes)
    assert attributes["um_team"] == "search"
    assert len(attributes["um_skipped"].encode()) == 1024


@pytest.mark.parametrize("metadata", [None, {}, [{"team": "x"}], "team", 3], ids=repr)
def test_metadata_that_is_not_an_object_mirrors_nothing(metadata: Any) -> None:
    assert metadata_attributes(metadata) == {}


def test_quarantined_events_have_no_metadata_attributes() -> None:
    body = b'{"type": 3, "user_metadata": {"team": "search"}}'
    event = normalize(WEBHOOK_ID, TIMESTAMP, body, "hmac")
    assert event.quarantined
    assert not [k for k in event.attributes() if k.startswith("um_")]


def test_reconciled_events_mirror_the_jobs_metadata() -> None:
    job = JobView(
        kind="batch",
        name="batches/b1",
        state="succeeded",
        terminal=True,
        user_metadata={"team": "search", "priority": 2, "deep": {"x": 1}},
    )
    event = synthesize(job, datetime(2026, 5, 4, tzinfo=UTC))
    attributes = event.attributes()
    assert attributes["signature"] == "reconciled"
    assert (attributes["um_team"], attributes["um_priority"]) == ("search", "2")
    assert attributes["um_skipped"] == "deep"


metadata_key = st.one_of(
    st.text(st.sampled_from("ab_Z09"), min_size=1, max_size=3),
    st.text(st.characters(codec="utf-8"), max_size=8),
    st.integers(60, 70).map(lambda size: "k" * size),
    st.integers(300, 1100).map(lambda size: "é" * size),
)
metadata_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(10**250, 10**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(codec="utf-8"), max_size=300),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(metadata_key, metadata_value, max_size=14))
def test_any_metadata_keeps_the_message_publishable_and_follows_the_rules(
    metadata: dict[str, Any],
) -> None:
    event = event_for(envelope("batch.succeeded", {"id": "b1", "user_metadata": metadata}))
    attributes = event.attributes()
    check_publishable(event.data(), attributes)
    read = json.loads(event.data())["data"]["user_metadata"]  # the delivered order
    mirrored = [k for k in attributes if k.startswith("um_") and k != "um_skipped"]
    assert len(mirrored) <= 8
    expected_mirrored: list[str] = []
    for key, value in read.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if (
            len(expected_mirrored) < 8
            and key != "skipped"
            and re.fullmatch(r"[A-Za-z0-9_]{1,64}", key)
            and value is not None
            and not isinstance(value, list | dict)
            and len(text.encode()) <= 256
        ):
            expected_mirrored.append(key)
            assert attributes[f"um_{key}"] == text
    assert mirrored == [f"um_{key}" for key in expected_mirrored]
    skipped = [key for key in read if key not in expected_mirrored]
    if skipped:
        named = attributes["um_skipped"]
        assert len(named.encode()) <= 1024
        whole = ",".join(skipped)
        assert whole.startswith(named) or skipped[0].startswith(named)
    else:
        assert "um_skipped" not in attributes
