"""FirestoreClaims against the Firestore emulator: the state machine of one delivery record."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.document import DocumentReference

from tests.integration.harness import Stack
from webhook_relay.claim import Claimed, Duplicate, FirestoreClaims, InFlight
from webhook_relay.deadline import Deadline
from webhook_relay.emulators import free_port
from webhook_relay.errors import Unavailable

COLLECTION = "claims_under_test"


def claims(stack: Stack, clock: Callable[[], float] | None = None) -> FirestoreClaims:
    if clock is None:
        return FirestoreClaims(lambda: stack.db, COLLECTION, lease_seconds=30, ttl_hours=72)
    return FirestoreClaims(lambda: stack.db, COLLECTION, 30, 72, clock=clock)


def claim(store: FirestoreClaims, webhook_id: str) -> Any:
    return store.claim(webhook_id, "batch.succeeded", "batches/1", Deadline())


def test_first_claim_then_in_flight_then_duplicate(stack: Stack) -> None:
    store, webhook_id = claims(stack), "msg_" + secrets.token_hex(6)

    first = claim(store, webhook_id)
    second = claim(store, webhook_id)
    store.mark_published(first, "gemini-batch", "m-1", Deadline())
    third = claim(store, webhook_id)

    assert isinstance(first, Claimed)
    assert first.attempts == 1
    assert isinstance(second, InFlight)
    assert 29 <= second.retry_after <= 30
    assert third == Duplicate(webhook_id)


def test_released_claim_is_taken_over_with_one_more_attempt(stack: Stack) -> None:
    store, webhook_id = claims(stack), "msg_" + secrets.token_hex(6)
    first = claim(store, webhook_id)

    store.release(first, Deadline())
    record = stack.record(COLLECTION, webhook_id)
    again = claim(store, webhook_id)

    assert record is not None
    assert record["lease_until"] <= datetime.now(UTC)
    assert isinstance(again, Claimed)
    assert again.attempts == 2
    # A claim taken over in a transaction can be released too (its token is that write's).
    store.release(again, Deadline())
    released = stack.record(COLLECTION, webhook_id)
    assert released is not None
    assert released["lease_until"] <= datetime.now(UTC)


def test_release_does_not_free_a_claim_taken_over_since(stack: Stack) -> None:
    later = [0.0]
    store = claims(stack)
    late = claims(stack, clock=lambda: datetime.now(UTC).timestamp() + later[0])
    webhook_id = "msg_" + secrets.token_hex(6)
    stale = claim(store, webhook_id)
    later[0] = 60  # the first claim's lease has run out: another request takes over
    current = claim(late, webhook_id)

    store.release(stale, Deadline())

    record = stack.record(COLLECTION, webhook_id)
    assert isinstance(current, Claimed)
    assert current.attempts == 2
    assert record is not None
    assert record["lease_until"] > datetime.now(UTC) + timedelta(seconds=60)


def test_create_that_timed_out_but_landed_is_released(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create = DocumentReference.create

    def create_then_time_out(self: DocumentReference, *args: Any, **kwargs: Any) -> Any:
        real_create(self, *args, **kwargs)
        raise api_exceptions.DeadlineExceeded("the answer was lost")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(DocumentReference, "create", create_then_time_out)
    store, webhook_id = claims(stack), "msg_" + secrets.token_hex(6)

    with pytest.raises(Unavailable):
        claim(store, webhook_id)
    monkeypatch.undo()
    retry = claim(store, webhook_id)

    assert isinstance(retry, Claimed)  # not a 409 for the rest of the lease
    assert retry.attempts == 2


def test_firestore_unreachable_is_unavailable_within_the_budget() -> None:
    client = firestore.Client(
        project="p",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": f"127.0.0.1:{free_port()}"},
    )
    store = FirestoreClaims(lambda: client, COLLECTION, 30, 72)
    deadline = Deadline(3.0)

    with pytest.raises(Unavailable):
        store.claim("msg_x", "batch.succeeded", None, deadline)
    assert deadline.remaining() > -0.5
