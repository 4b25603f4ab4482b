"""writes.py encodes a record exactly as the library's own `create`/`update` would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import write
from hypothesis import given
from hypothesis import strategies as st

from webhook_relay import writes

REF = firestore.Client(project="p", credentials=AnonymousCredentials()).document(  # type: ignore[no-untyped-call]
    "deliveries/" + "a" * 64
)
PATH = REF._document_path


def library(pbs: list[Any]) -> bytes:
    (only,) = pbs
    return bytes(write.Write.pb(only).SerializeToString(deterministic=True))


def ours(pb: Any) -> bytes:
    return bytes(pb.SerializeToString(deterministic=True))


moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
values = st.one_of(
    st.none(),
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    moments,
)
records = st.dictionaries(st.from_regex(r"[a-z_]{1,20}", fullmatch=True), values, max_size=14)


@given(records)
def test_a_create_is_encoded_as_the_librarys(record: dict[str, Any]) -> None:
    assert ours(writes.create(REF, record)) == library(_helpers.pbs_for_create(PATH, record))


# A token is an update time Firestore gave. (Before 1970, proto-plus, which encodes the
# library's precondition, rounds toward zero: a second late.)
tokens = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(records.filter(bool), tokens)
def test_an_update_is_encoded_as_the_librarys(record: dict[str, Any], token: datetime) -> None:
    option = _helpers.LastUpdateOption(token)
    expected = library(_helpers.pbs_for_update(PATH, record, option))

    assert ours(writes.update(REF, record, token)) == expected


def test_an_update_time_token_keeps_its_nanoseconds() -> None:
    token = DatetimeWithNanoseconds(2026, 12, 5, 7, 0, 0, nanosecond=123_456_789, tzinfo=UTC)  # type: ignore[no-untyped-call]

    written = writes.update(REF, {"state": "published"}, token)

    stamp = written.current_document.update_time
    assert (stamp.seconds, stamp.nanos) == (int(token.timestamp()), 123_456_789)


def test_an_aware_datetime_in_another_zone_is_the_same_instant() -> None:
    moment = datetime(2026, 12, 5, 8, 30, tzinfo=timezone(timedelta(hours=1, minutes=30)))

    written = writes.create(REF, {"at": moment})

    assert written.update.fields["at"].timestamp_value.ToDatetime(UTC) == moment


@pytest.mark.parametrize(
    "value",
    [datetime(2026, 12, 5), 1.5, b"bytes", ["list"], {"map": 1}],
    ids=["naive datetime", "float", "bytes", "list", "map"],
)
def test_a_value_a_record_never_holds_is_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        writes.create(REF, {"field": value})


def test_a_commits_update_time_is_a_token_as_it_is() -> None:
    token = write.WriteResult.pb()(update_time={"seconds": 1_796_000_000, "nanos": 7}).update_time

    written = writes.update(REF, {"state": "published"}, token)

    assert written.current_document.update_time == token


@given(records)
def test_a_read_decodes_what_a_write_encoded(record: dict[str, Any]) -> None:
    document = writes.create(REF, record).update

    decoded = {name: writes._decoded(value) for name, value in document.fields.items()}

    assert decoded == record
    assert decoded == _helpers.decode_dict(document.fields, client=None)
