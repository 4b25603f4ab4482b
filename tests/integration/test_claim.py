"""FirestoreClaims against the Firestore emulator: the state machine of one delivery record."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from tests.integration.harness import Stack
from webhook_relay.claim import BoundedTransaction, Claimed, Duplicate, FirestoreClaims, InFlight
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


class CommitFault(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """On a client's channel: while `fault` is set, each `Commit` lands on the emulator (once
    or `fault` times), then the caller sees what `fault` says."""

    def __init__(self) -> None:
        self.fault: str | None = None  # "answer lost" | "sent twice"

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if self.fault is None or not details.method.endswith("/Commit"):
            return continuation(details, request)
        outcome = continuation(details, request)
        if self.fault == "answer lost":
            outcome.result()  # it landed
            raise LostAnswer
        return continuation(details, request)  # "sent twice": the second answer is the caller's


class LostAnswer(grpc.RpcError):  # type: ignore[misc]
    """What a call whose answer never arrived raises: DEADLINE_EXCEEDED."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "the answer was lost"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_create_that_timed_out_but_landed_is_released(stack: Stack) -> None:
    faults = CommitFault()
    db, webhook_id = stack.db_through(faults), "msg_" + secrets.token_hex(6)
    store = FirestoreClaims(lambda: db, COLLECTION, lease_seconds=30, ttl_hours=72)

    faults.fault = "answer lost"
    with pytest.raises(Unavailable):
        claim(store, webhook_id)
    faults.fault = None
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


def test_own_create_that_landed_before_a_retry_is_ours(stack: Stack) -> None:
    # The create committed, its answer was lost, the call was retried: AlreadyExists, for
    # a record that is this request's own claim, not another request's (no 409 for a lease).
    faults = CommitFault()
    db, webhook_id = stack.db_through(faults), "msg_" + secrets.token_hex(6)
    store = FirestoreClaims(lambda: db, COLLECTION, lease_seconds=30, ttl_hours=72)

    faults.fault = "sent twice"
    first = claim(store, webhook_id)
    faults.fault = None
    other = claim(store, webhook_id)

    assert isinstance(first, Claimed)
    assert first.attempts == 1
    assert isinstance(other, InFlight)  # and still a live claim for everyone else
    store.mark_published(first, "gemini-batch", "m-1", Deadline())  # its token is the record's
    assert claim(store, webhook_id) == Duplicate(webhook_id)


def test_a_claim_taken_over_since_is_not_marked_published(stack: Stack) -> None:
    later = [0.0]
    store = claims(stack)
    late = claims(stack, clock=lambda: datetime.now(UTC).timestamp() + later[0])
    webhook_id = "msg_" + secrets.token_hex(6)
    stale = claim(store, webhook_id)
    later[0] = 60
    current = claim(late, webhook_id)

    with pytest.raises(api_exceptions.FailedPrecondition):
        store.mark_published(stale, "gemini-batch", "m-stale", Deadline())

    record = stack.record(COLLECTION, webhook_id)
    assert isinstance(current, Claimed)
    assert record is not None
    assert (record["state"], record["message_id"]) == ("claimed", None)


def test_transaction_begin_and_commit_give_up_at_their_timeout(own_stack: Stack) -> None:
    # The library's own begin/commit wait up to 60 s for a Firestore that does not answer.
    transaction = BoundedTransaction(own_stack.db, timeout=0.5)
    pid = own_stack.firestore_emulator.pid
    assert pid is not None
    os.killpg(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(api_exceptions.DeadlineExceeded):
            transaction._begin()
        assert time.monotonic() - started < 5
    finally:
        os.killpg(pid, signal.SIGCONT)
