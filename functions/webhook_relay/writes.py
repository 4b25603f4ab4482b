"""The record writes of a delivery, encoded straight to protobuf and sent as one commit.

`DocumentReference.create`/`update` and `WriteBatch` build each write through proto-plus,
field by field: measured on the emulator, that encoding was about half of the client-side CPU
of a delivery's two commits (bench/results.md, row 3). Our records hold only strings, integers,
booleans, None and UTC datetimes under plain field names, so they are encoded here with the
raw protobuf classes the library itself wraps, and committed with the same generated call the
library makes (`Firestore.Commit`): same request, same errors, same retries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.types import common, document, write
from google.cloud.firestore_v1.types import firestore as firestore_types

_Value = document.Value.pb()
_Document = document.Document.pb()
_Write = write.Write.pb()
_Precondition = common.Precondition.pb()
_Mask = common.DocumentMask.pb()
_CommitRequest = firestore_types.CommitRequest.pb()
_NULL = _Value(null_value=0)
_Timestamp = type(_Value().timestamp_value)  # google.protobuf's, without its untyped import


def create(ref: firestore.DocumentReference, fields: Mapping[str, Any]) -> Any:
    """A write creating the document, failing (AlreadyExists) if it exists."""
    return _Write(
        update=_Document(name=ref._document_path, fields=_fields(fields)),
        current_document=_Precondition(exists=False),
    )


def update(ref: firestore.DocumentReference, fields: Mapping[str, Any], token: Any) -> Any:
    """A write setting `fields` only if the document is unchanged since `token` (its update
    time, as a write result or snapshot gives it), failing (FailedPrecondition) otherwise."""
    return _Write(
        update=_Document(name=ref._document_path, fields=_fields(fields)),
        update_mask=_Mask(field_paths=list(fields)),
        current_document=_Precondition(update_time=_timestamp(token)),
    )


def commit(client: firestore.Client, writes: Sequence[Any], options: Mapping[str, Any]) -> Any:
    """One atomic commit of `writes`; its write results, in order. `options`: retry, timeout."""
    request = _CommitRequest(database=client._database_string, writes=writes)
    response = client._firestore_api.commit(
        request=firestore_types.CommitRequest.wrap(request),
        metadata=client._rpc_metadata,
        **options,
    )
    return response.write_results


def _fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _value(value) for name, value in fields.items()}


def _value(value: Any) -> Any:
    if value is None:
        return _NULL
    if isinstance(value, str):
        return _Value(string_value=value)
    if isinstance(value, bool):
        return _Value(boolean_value=value)
    if isinstance(value, int):
        return _Value(integer_value=value)
    if isinstance(value, datetime):
        return _Value(timestamp_value=_timestamp(value))
    raise TypeError(f"a record holds no {type(value).__name__}")


def _timestamp(moment: Any) -> Any:
    # The library's update times keep their nanoseconds (DatetimeWithNanoseconds): a
    # precondition must name the exact time, or it never matches.
    exact = getattr(moment, "timestamp_pb", None)
    if exact is not None:
        return exact()
    stamp = _Timestamp()
    stamp.FromDatetime(moment)
    return stamp
