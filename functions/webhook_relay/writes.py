"""The record writes of a delivery, encoded straight to protobuf and sent as one commit, and
the read that says why a create failed.

`DocumentReference.create`/`update` and `WriteBatch` build each write through proto-plus,
field by field: measured on the emulator, that encoding was about half of the client-side CPU
of a delivery's two commits (bench/results.md, row 3). Our records hold only strings, integers,
booleans, None and UTC datetimes under plain field names, so they are encoded here with the
raw protobuf classes the library itself wraps, and committed as the same `Firestore.Commit`
request on the client's own channel (rpc.py): same request, same errors, same retries. The
read is `Firestore.GetDocument` of the few fields a duplicate's answer needs, where
`DocumentReference.get` streams `BatchGetDocuments` and decodes every field through proto-plus.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.services.firestore.transports.base import DEFAULT_CLIENT_INFO
from google.cloud.firestore_v1.types import document, write
from google.cloud.firestore_v1.types import firestore as firestore_types

from .rpc import Metadata, Unary, routing

_SERVICE = "/google.firestore.v1.Firestore"
_INFO = DEFAULT_CLIENT_INFO  # what the generated client sends: firestore.Client passes none
_Write = write.Write.pb()
_CommitRequest = firestore_types.CommitRequest.pb()
_CommitResponse = firestore_types.CommitResponse.pb()
_GetRequest = firestore_types.GetDocumentRequest.pb()
_Document = document.Document.pb()
_Timestamp = type(_Write().current_document.update_time)  # google.protobuf's
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def create(ref: firestore.DocumentReference, fields: Mapping[str, Any]) -> Any:
    """A write creating the document, failing (AlreadyExists) if it exists."""
    # Built in place: a message passed to a constructor is copied, map values included
    # (27 µs a record that way, 7 µs this way).
    created = _Write()
    _set_document(created.update, ref, fields)
    created.current_document.exists = False
    return created


def update(ref: firestore.DocumentReference, fields: Mapping[str, Any], token: Any) -> Any:
    """A write setting `fields` only if the document is unchanged since `token` (its update
    time, as a write result or snapshot gives it), failing (FailedPrecondition) otherwise."""
    updated = _Write()
    _set_document(updated.update, ref, fields)
    updated.update_mask.field_paths.extend(sorted(fields))  # as the library orders them
    _set_timestamp(updated.current_document.update_time, token)
    return updated


def commit(client: firestore.Client, writes: Sequence[Any], options: Mapping[str, Any]) -> Any:
    """One atomic commit of `writes`; the update time of each, in order, as protobuf
    Timestamps: a token for `update`, like a snapshot's. `options`: retry, timeout."""
    calls = _CALLS.get(client) or _calls(client)
    request = _CommitRequest(database=client._database_string, writes=writes)
    response = calls.commit(request, calls.routing, options["timeout"], options["retry"])
    return [result.update_time for result in response.write_results]


def read(
    client: firestore.Client,
    ref: firestore.DocumentReference,
    fields: Sequence[str],
    options: Mapping[str, Any],
) -> tuple[dict[str, Any], Any] | None:
    """The record's `fields` (those it holds) and its update time (a token for `update`);
    None if there is no record. One `GetDocument` call, which reads only those fields."""
    calls = _CALLS.get(client) or _calls(client)
    path = ref._document_path
    request = _GetRequest(name=path, mask={"field_paths": fields})
    try:
        found = calls.get(request, routing(name=path), options["timeout"], options["retry"])
    except api_exceptions.NotFound:
        return None
    return {name: _decoded(value) for name, value in found.fields.items()}, found.update_time


@dataclass(frozen=True)
class _Calls:
    commit: Unary
    get: Unary
    routing: Metadata  # the commit's


# One set per client (an instance has one), made on first use.
_CALLS: weakref.WeakKeyDictionary[firestore.Client, _Calls] = weakref.WeakKeyDictionary()


def _calls(client: firestore.Client) -> _Calls:
    channel = client._firestore_api._transport.grpc_channel
    metadata = client._rpc_metadata
    calls = _CALLS[client] = _Calls(
        Unary(channel, f"{_SERVICE}/Commit", _CommitRequest, _CommitResponse, _INFO, metadata),
        Unary(channel, f"{_SERVICE}/GetDocument", _GetRequest, _Document, _INFO, metadata),
        routing(database=client._database_string),
    )
    return calls


def _set_document(doc: Any, ref: firestore.DocumentReference, fields: Mapping[str, Any]) -> None:
    doc.name = ref._document_path
    values = doc.fields
    for name, value in fields.items():
        slot = values[name]
        if value is None:
            slot.null_value = 0
        elif isinstance(value, str):
            slot.string_value = value
        elif isinstance(value, bool):
            slot.boolean_value = value
        elif isinstance(value, int):
            slot.integer_value = value
        elif isinstance(value, datetime):
            _set_timestamp(slot.timestamp_value, value)
        else:
            raise TypeError(f"a record holds no {type(value).__name__}")


def _set_timestamp(stamp: Any, moment: Any) -> None:
    # An update time, a token, keeps its nanoseconds (a commit's Timestamp, a snapshot's
    # DatetimeWithNanoseconds): a precondition must name the exact time, or it never matches.
    if isinstance(moment, _Timestamp):
        stamp.CopyFrom(moment)
        return
    exact = getattr(moment, "timestamp_pb", None)
    if exact is not None:
        stamp.CopyFrom(exact())
        return
    # Aware datetimes only (a naive one raises): `Timestamp.FromDatetime` does the same
    # arithmetic through time tuples, at four times the cost.
    since = moment - _EPOCH
    stamp.seconds = since.days * 86_400 + since.seconds
    stamp.nanos = since.microseconds * 1000


def _decoded(value: Any) -> Any:
    kind = value.WhichOneof("value_type")
    if kind == "string_value":
        return value.string_value
    if kind == "timestamp_value":
        stamp = value.timestamp_value
        return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)
    if kind == "integer_value":
        return value.integer_value
    if kind == "boolean_value":
        return value.boolean_value
    if kind == "null_value":
        return None
    raise TypeError(f"a record holds no {kind}")
