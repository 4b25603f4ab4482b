"""A terminal delivery against the real emulators, through the relay's own parts: what it
costs, which types settle a job, who owns a job's claim, and records that stay writable
whatever a delivery carries."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from tests.integration.harness import PROJECT, Stack
from webhook_relay.claim import Companion, FirestoreClaims, document_id, write_if_ours
from webhook_relay.deadline import Deadline
from webhook_relay.jobs import (
    CLAIMED,
    PUBLISHED,
    FirestoreJobs,
    JobClaimed,
    JobInFlight,
    JobKey,
    JobPublished,
)
from webhook_relay.publish import PubSubPublisher
from webhook_relay.relay import Relay
from webhook_relay.routing import parse_routes
from webhook_relay.subscriber import parse_event
from webhook_relay.verify import Delivery

LEASE = 15  # the floor


class CountingApi(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Counts the RPCs on the client's channel by method (`Commit`, `BatchGetDocuments`, …),
    whichever layer of the library or of ours makes them."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.metadata: list[dict[str, str]] = []  # of each unary call, in order

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        self.metadata.append(dict(details.metadata or ()))
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details, request)


@dataclass
class Rig:
    stack: Stack
    db: firestore.Client
    api: CountingApi
    relay: Relay
    deliveries: str
    jobs_collection: str
    jobs: FirestoreJobs

    def deliver(self, event_type: str, data: dict[str, Any], webhook_id: str = "") -> Any:
        body = json.dumps(
            {"type": event_type, "version": "v1", "timestamp": "2026-12-05T00:00:00Z", "data": data}
        ).encode()
        webhook_id = webhook_id or "msg_" + secrets.token_hex(8)
        delivery = Delivery(webhook_id, int(time.time()), str(int(time.time())), "", body)
        return self.relay.deliver(delivery, "hmac", Deadline())

    def job(self, key: JobKey) -> dict[str, Any] | None:
        snapshot = self.db.collection(self.jobs_collection).document(key.document_id).get()
        return snapshot.to_dict() if snapshot.exists else None


@pytest.fixture
def rig(stack: Stack) -> Rig:
    api = CountingApi()
    db = stack.db_through(api)
    suffix = secrets.token_hex(4)
    deliveries, jobs_collection = f"deliveries_{suffix}", f"jobs_{suffix}"
    claims = FirestoreClaims(lambda: db, deliveries, LEASE, 72)
    jobs = FirestoreJobs(lambda: db, jobs_collection, LEASE, 72, deliveries=deliveries)
    publisher = PubSubPublisher(lambda: stack.publisher, PROJECT)
    relay = Relay(claims, publisher, parse_routes(None, "gemini-"), jobs)
    return Rig(stack, db, api, relay, deliveries, jobs_collection, jobs)


def subjects(stack: Stack, subscription: str) -> list[tuple[str, str]]:
    events = [parse_event(message.message) for message in stack.pull(subscription)]
    return sorted((event.type, event.subject or "") for event in events)


def test_a_new_terminal_delivery_costs_two_firestore_calls(rig: Rig) -> None:
    rig.deliver("batch.running", {"id": "warm"})  # the channel's first call is not counted
    rig.api.calls.clear()

    outcome = rig.deliver("batch.succeeded", {"id": "batches/b_" + secrets.token_hex(4)})

    assert outcome.status == "accepted"
    # One commit creates the delivery's and the job's records, one marks both published.
    assert dict(rig.api.calls) == {"Commit": 2}


def test_our_commit_carries_the_metadata_of_the_librarys(rig: Rig) -> None:
    collection = rig.db.collection(rig.deliveries)
    collection.document("theirs").create({"state": "claimed"})  # the library's own commit
    deadline = Deadline()

    FirestoreClaims(lambda: rig.db, rig.deliveries, LEASE, 72).claim(
        "ours", "batch.succeeded", None, deadline
    )

    theirs, ours = rig.api.metadata[-2:]
    assert rig.api.calls["Commit"] >= 2
    assert {"x-goog-request-params", "google-cloud-resource-prefix"} <= set(ours)
    assert ours == theirs  # and x-goog-api-client, and the emulator's authorization


def test_a_duplicate_terminal_delivery_costs_two_firestore_calls(rig: Rig) -> None:
    webhook_id = "msg_" + secrets.token_hex(8)
    rig.deliver("batch.succeeded", {"id": "b_dup"}, webhook_id)
    rig.api.calls.clear()

    outcome = rig.deliver("batch.succeeded", {"id": "b_dup"}, webhook_id)

    assert outcome.status == "duplicate"
    assert sum(rig.api.calls.values()) == 2  # the create that fails, the read that says why


def test_both_records_say_published_with_the_same_message(rig: Rig) -> None:
    job_id = "b_" + secrets.token_hex(4)
    webhook_id = "msg_" + secrets.token_hex(8)

    outcome = rig.deliver("batch.succeeded", {"id": job_id}, webhook_id)

    delivery = rig.stack.record(rig.deliveries, webhook_id)
    job = rig.job(JobKey("batch", job_id))
    assert delivery is not None
    assert job is not None
    assert (job["state"], job["message_id"], job["webhook_id"]) == (
        PUBLISHED,
        outcome.message_id,
        webhook_id,
    )
    assert delivery["message_id"] == outcome.message_id
    assert job["owner"] == delivery["owner"]  # one request's token on both


def test_a_new_type_in_a_known_family_does_not_swallow_the_terminal_event(
    rig: Rig, stack: Stack
) -> None:
    subscription = stack.subscribe("gemini-batch")
    name = "batches/b_" + secrets.token_hex(4)

    running = rig.deliver("batch.running", {"id": name})
    succeeded = rig.deliver("batch.succeeded", {"id": name})
    again = rig.deliver("batch.succeeded", {"id": name})  # another webhook-id, same job

    assert (running.status, succeeded.status, again.status) == (
        "accepted",
        "accepted",
        "duplicate",
    )
    assert subjects(stack, subscription) == [("batch.running", name), ("batch.succeeded", name)]


def test_an_id_of_any_length_is_one_job_and_never_a_503(rig: Rig, stack: Stack) -> None:
    subscription = stack.subscribe("gemini-batch")
    long_id = "batches/" + "x" * 1_000_000

    first = rig.deliver("batch.failed", {"id": long_id, "error_code": 13})
    second = rig.deliver("batch.failed", {"id": long_id, "error_code": 13})

    assert (first.status, second.status) == ("accepted", "duplicate")
    assert len(stack.pull(subscription)) == 1
    job = rig.job(JobKey("batch", long_id.rpartition("/")[2]))
    assert job is not None
    assert len(job["job_id"].encode()) <= 512
    assert len(job["name"].encode()) <= 512


@pytest.mark.parametrize(
    "job_id",
    [
        "b_\ud800_lone_surrogate",  # JSON allows it; UTF-8, and Firestore, do not
        "b_" + "é" * 2000,
    ],
)
def test_delivered_strings_firestore_would_refuse_are_answered_200(rig: Rig, job_id: str) -> None:
    first = rig.deliver("batch.succeeded", {"id": job_id})
    second = rig.deliver("batch.succeeded", {"id": job_id})

    assert (first.http_status, second.http_status) == (200, 200)
    assert second.status in ("duplicate", "quarantined")


def test_a_long_event_type_is_stored_capped(rig: Rig) -> None:
    outcome = rig.deliver("batch." + "y" * 600_000, {"id": "b_" + secrets.token_hex(4)})
    assert outcome.http_status == 200


# --- who owns a job's claim -----------------------------------------------------------------


def key() -> JobKey:
    return JobKey("batch", "b_" + secrets.token_hex(6))


def test_a_live_claim_of_the_same_delivery_waits_for_its_lease(rig: Rig) -> None:
    job = key()
    first = rig.jobs.claim(job, "request-1", "batch.succeeded", "batches/x", Deadline(), "msg_1")
    # Gemini's retry of the same delivery: same webhook-id, another request.
    retry = rig.jobs.claim(job, "request-2", "batch.succeeded", "batches/x", Deadline(), "msg_1")

    assert isinstance(first, JobClaimed)
    assert isinstance(retry, JobInFlight)


def test_our_own_claim_that_landed_is_recognised(rig: Rig) -> None:
    job = key()
    first = rig.jobs.claim(job, "request-1", "batch.succeeded", "batches/x", Deadline(), "msg_1")
    # The same request again, as when its commit landed but the answer was lost.
    again = rig.jobs.claim(job, "request-1", "batch.succeeded", "batches/x", Deadline(), "msg_1")

    assert isinstance(first, JobClaimed)
    assert isinstance(again, JobClaimed)


def test_an_abandoned_claim_attempt_leaves_no_live_claim(rig: Rig) -> None:
    """A request that stopped waiting for its job claim answered 503; the library may still
    commit (or re-run) its transaction. Whatever it writes must not hold the job: Gemini's
    retry, another request, claims it at once."""
    job = key()
    holder = rig.jobs.claim(job, "holder", "batch.succeeded", "batches/x", Deadline(), "msg_1")
    assert isinstance(holder, JobClaimed)
    rig.jobs.release(holder, Deadline())
    # A transaction of ours holding the record's lock keeps the attempt's commit waiting
    # past its caller's deadline.
    blocker = rig.db.transaction()
    blocker._begin()
    rig.db.collection(rig.jobs_collection).document(job.document_id).get(transaction=blocker)
    try:
        late = rig.jobs.claim(job, "late", "batch.succeeded", "batches/x", Deadline(0.5), "msg_1")
    finally:
        blocker._rollback()
    assert isinstance(late, JobInFlight)  # the loser of a lock is told to retry, not 503

    retry: Any = None
    for _ in range(50):  # the abandoned attempt finishes in the background
        retry = rig.jobs.claim(job, "retry", "batch.succeeded", "batches/x", Deadline(), "msg_1")
        if isinstance(retry, JobClaimed):
            break
        time.sleep(0.1)
    assert isinstance(retry, JobClaimed)


def test_a_job_left_claimed_by_a_delivery_that_published_is_adopted(rig: Rig) -> None:
    """The delivery published and marked its own record, but its job record still says
    `claimed` (a write that failed, a process that died): a take-over after the lease reads
    the delivery's record and marks the job published with its message, publishing nothing."""
    job, webhook_id, now = key(), "msg_" + secrets.token_hex(6), datetime.now(UTC)
    rig.db.collection(rig.deliveries).document(document_id(webhook_id)).set(
        {"webhook_id": webhook_id, "state": PUBLISHED, "event_type": "batch.succeeded",
         "topic": "gemini-batch", "message_id": "m-delivered", "published_at": now}
    )  # fmt: skip
    rig.db.collection(rig.jobs_collection).document(job.document_id).set(
        {"kind": "batch", "job_id": job.job_id, "state": CLAIMED, "owner": "gone",
         "webhook_id": webhook_id, "lease_until": now - timedelta(seconds=1)}
    )  # fmt: skip

    found = rig.jobs.claim(job, "reconcile-run", "batch.succeeded", "batches/x", Deadline())

    assert isinstance(found, JobPublished)
    assert found.message_id == "m-delivered"
    record = rig.job(job)
    assert record is not None
    assert (record["state"], record["message_id"]) == (PUBLISHED, "m-delivered")


def test_a_job_left_claimed_by_a_delivery_that_did_not_publish_is_taken_over(rig: Rig) -> None:
    job, webhook_id, now = key(), "msg_" + secrets.token_hex(6), datetime.now(UTC)
    rig.db.collection(rig.jobs_collection).document(job.document_id).set(
        {"kind": "batch", "job_id": job.job_id, "state": CLAIMED, "owner": "gone",
         "webhook_id": webhook_id, "lease_until": now - timedelta(seconds=1)}
    )  # fmt: skip

    found = rig.jobs.claim(job, "reconcile-run", "batch.succeeded", "batches/x", Deadline())

    assert isinstance(found, JobClaimed)


def test_a_delivery_waiting_on_a_locked_job_record_is_in_flight_never_503(rig: Rig) -> None:
    """The loser of a race on the job record's lock (a run's transaction holding it) is told
    to retry (409 `in_flight`), not that Firestore is unavailable (503), and its delivery
    record is released for that retry."""
    name = "batches/b_" + secrets.token_hex(4)
    job = JobKey("batch", name.rpartition("/")[2])
    # A watched job: the delivery's create finds its record and claims it in a transaction.
    assert rig.jobs.watch(job, name, Deadline())
    blocker = rig.db.transaction()
    blocker._begin()
    rig.db.collection(rig.jobs_collection).document(job.document_id).get(transaction=blocker)
    webhook_id = "msg_" + secrets.token_hex(6)
    try:
        outcome = rig.deliver("batch.succeeded", {"id": name}, webhook_id)
    finally:
        blocker._rollback()

    assert (outcome.status, outcome.http_status) == ("in_flight", 409)
    record = rig.stack.record(rig.deliveries, webhook_id)
    assert record is not None
    assert record["lease_until"] <= datetime.now(UTC)  # released: the retry is not held up


# --- record writes whose answer was lost ----------------------------------------------------


def test_a_mark_that_landed_but_whose_answer_was_lost_counts_as_done(rig: Rig) -> None:
    ref = rig.db.collection(rig.deliveries).document("lost-answer-" + secrets.token_hex(4))
    token = ref.create({"owner": "me", "state": "claimed"}).update_time
    mark = Companion(ref, {"state": PUBLISHED, "message_id": "m-1"}, "me", token)

    write_if_ours(rig.db, [mark], Deadline())
    # The library's retry of the same commit, after its first answer was lost.
    write_if_ours(rig.db, [mark], Deadline())

    someone_else = Companion(ref, {"state": PUBLISHED, "message_id": "m-2"}, "me", token)
    with pytest.raises(api_exceptions.FailedPrecondition):
        write_if_ours(rig.db, [someone_else], Deadline())


def race_claims(
    claim: Callable[[str], Any], contenders: int = 2
) -> list[Any]:  # pragma: no cover - helper
    barrier = threading.Barrier(contenders)
    results: list[Any] = [None] * contenders

    def run(index: int) -> None:
        barrier.wait()
        results[index] = claim(f"request-{index}")

    threads = [threading.Thread(target=run, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_deliveries_of_one_job_racing_publish_it_once(rig: Rig, stack: Stack) -> None:
    subscription = stack.subscribe("gemini-batch")
    name = "batches/b_" + secrets.token_hex(4)

    outcomes = race_claims(lambda _: rig.deliver("batch.succeeded", {"id": name}), 4)

    statuses = Counter(outcome.status for outcome in outcomes)
    assert statuses["accepted"] == 1, statuses
    assert set(statuses) <= {"accepted", "duplicate", "in_flight"}
    assert len(stack.pull(subscription)) == 1
