"""The promise under faults: exactly one terminal event per job, whichever path publishes it.

Deliveries (signed `v1` by `standardwebhooks`, retried like Gemini: same `webhook-id`, again
on anything but a 2xx) and `reconcile` runs (two schedulers at once) race on the same jobs,
with real processes on the real emulators, while
  1. Firestore is frozen (SIGSTOP) for longer than the claim lease (15 s, the floor), then
     thawed; more deliveries arrive while it is frozen;
  2. Pub/Sub is frozen while deliveries are publishing, and the relay process serving them is
     killed (SIGKILL); a fresh relay process serves Gemini's retries;
  3. Firestore stalls, for less than the lease, between `reconcile`'s publishes and their
     record writes; Gemini's deliveries of those jobs come after the lease.
Then every terminal event on Pub/Sub is counted per job (kind and id: a delivered batch
event's subject is the bare id Gemini sends, a reconciled one's the resource name).

The one double the design allows is the crash window between a publish and its record
(README, "Delivery guarantees"): Pub/Sub took the publish, and no record will ever say so,
because the publishing process died (2), or Firestore stayed frozen past the lease before its
record write could land (1). The test tells those doubles from the others: the extra event is
one no record knows, published by the killed process (a delivery it had in flight), or
published just before or during the long freeze. Nothing excuses a double in 3: a stall
shorter than the lease leaves every path time to record what it published.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as api_exceptions

from tests.integration.conftest import StartRelay
from tests.integration.harness import (
    ReconcileProcess,
    RelayServer,
    Stack,
    freeze,
    frozen,
    kill,
    thaw,
)
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_gemini_jobs import FakeJobs
from tests.support.signing import headers_v1
from webhook_relay.claim import document_id
from webhook_relay.deadline import Deadline
from webhook_relay.jobs import FirestoreJobs, JobKey, job_id_of

pytestmark = pytest.mark.emulators

LEASE_SECONDS = 15  # the floor: the tightest a deployment may run
FREEZE_SECONDS = LEASE_SECONDS + 5  # every lease taken before the freeze is over at the thaw
# Well under every publish timeout (reconcile's: 4 s): only the killed process loses one.
PUBSUB_FREEZE_SECONDS = 1.5
CLAIM_WAIT_SECONDS = 3.0  # for a run to claim a new job: under reconcile's publish timeout
# Longer than one Firestore call may wait (5 s), well inside the lease: a record write retried
# within the lease lands.
STALL_SECONDS = 6.5
LATE_SECONDS = 6  # deliveries sent this long before the thaw: their leases outlive it
# A publish this long before the freeze may still have had its record write pending.
RECORD_SLACK_SECONDS = 2.0
DELIVERY_SECONDS = 90  # a delivery still not 2xx by then fails the test
TERMINAL_KINDS = ("batch", "interaction")
ENDED = timedelta(hours=1)  # long past the grace period: `reconcile` publishes at first sight


@dataclass(frozen=True)
class Job:
    key: JobKey
    webhook_id: str
    body: bytes
    phase: int
    senders: int  # Gemini sending the same delivery twice at once, for some


@dataclass
class Freezes:
    """When Firestore was frozen (wall clock, as Pub/Sub's `publish_time`)."""

    spans: list[tuple[float, float]] = field(default_factory=list)

    @contextmanager
    def timed(self) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.spans.append((start, time.time()))


@dataclass
class Gemini:
    """Gemini's delivery side: each delivery retried with its own `webhook-id` until a 2xx,
    against whichever relay process serves the URL now."""

    secret: str
    relay: RelayServer
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: dict[int, tuple[str, RelayServer]] = field(default_factory=dict)
    attempts: Iterator[int] = field(default_factory=itertools.count)
    answers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def deliver(self, job: Job) -> str:
        give_up = time.monotonic() + DELIVERY_SECONDS
        pause = 0.5
        while True:
            with self.lock:
                relay = self.relay
                attempt = next(self.attempts)
                self.in_flight[attempt] = (job.webhook_id, relay)
            try:
                answer = relay.post(job.body, headers_v1(self.secret, job.body, job.webhook_id))
                status, outcome = answer.status, str(answer.body.get("status"))
            except (OSError, ValueError, http.client.HTTPException) as error:
                # Refused, reset, or an answer cut short (IncompleteRead: killed between its
                # headers and its body): the process is gone, and Gemini retries.
                status, outcome = 0, type(error).__name__
            finally:
                with self.lock:
                    del self.in_flight[attempt]
            self.answers[job.webhook_id].append(f"{status} {outcome}")
            if 200 <= status < 300:
                return outcome
            if time.monotonic() > give_up:
                raise AssertionError(f"{job.key}: no 2xx in {DELIVERY_SECONDS} s: {outcome}")
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(2 * pause, 3.0)

    def kill(self) -> set[str]:
        """Kill the serving process; the `webhook-id`s it had requests of in flight."""
        with self.lock:
            killed = self.relay
            kill(killed)
            return {webhook_id for webhook_id, relay in self.in_flight.values() if relay is killed}

    def serve_with(self, relay: RelayServer) -> None:
        with self.lock:
            self.relay = relay


class Runs:
    """`reconcile` invoked over and over by `loops` schedulers at once, until stopped."""

    def __init__(self, server: ReconcileProcess, loops: int) -> None:
        self._server = server
        self._stop = threading.Event()
        self.summaries: list[tuple[int, dict[str, Any]]] = []
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(loops)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.summaries.append(self._server.run())
            self._stop.wait(random.uniform(0.2, 1.0))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)
            assert not thread.is_alive(), "a reconcile run did not end"


@contextmanager
def runs(server: ReconcileProcess, loops: int) -> Iterator[Runs]:
    scheduler = Runs(server, loops)
    try:
        yield scheduler
    finally:
        scheduler.stop()


def make_jobs(
    fake: FakeJobs, store: FirestoreJobs, phase: int, batches: int, watched: int
) -> list[Job]:
    ended = datetime.now(UTC) - ENDED
    jobs = []
    for n in range(batches):
        name = fake.add_batch(f"p{phase}b{n}_{secrets.token_hex(3)}", end_time=ended)
        # Gemini's `data.id` is the bare id; the resource name is the same job.
        data_id = name if n % 2 else job_id_of(name)
        jobs.append(
            delivery_of(JobKey("batch", job_id_of(name)), "batch.succeeded", data_id, phase, n)
        )
    for n in range(watched):
        interaction_id = f"p{phase}i{n}_{secrets.token_hex(3)}"
        fake.add_interaction(interaction_id, "completed", updated=ended)
        key = JobKey("interaction", interaction_id)
        assert store.watch(key, interaction_id, Deadline(10))  # as `webhook_relay.watch` does
        jobs.append(delivery_of(key, "interaction.completed", interaction_id, phase, n))
    return jobs


def delivery_of(key: JobKey, event_type: str, data_id: str, phase: int, n: int) -> Job:
    body = json.dumps(
        {
            "type": event_type,
            "version": "v1",
            "timestamp": "2026-12-01T10:00:00Z",
            "data": {"id": data_id},
        }
    ).encode()
    return Job(key, f"msg_{secrets.token_hex(12)}", body, phase, senders=2 if n % 3 == 0 else 1)


def send(pool: ThreadPoolExecutor, gemini: Gemini, jobs: list[Job]) -> list[Future[str]]:
    return [pool.submit(gemini.deliver, j) for j in jobs for _ in range(j.senders)]


def wait_for_claims(
    stack: Stack, collection: str, jobs: list[Job], least: int, seconds: float
) -> int:
    """Until `least` of these jobs are claimed or published (a path took them), or `seconds`
    pass: never longer, since a freeze is timed by it. How many were."""
    refs = [stack.db.collection(collection).document(j.key.document_id) for j in jobs]
    give_up = time.monotonic() + seconds
    taken = 0
    while (left := give_up - time.monotonic()) > 0.05:
        try:
            found = list(stack.db.get_all(refs, timeout=left, retry=None))
        except api_exceptions.GoogleAPIError:
            break
        states = [snapshot.get("state") for snapshot in found if snapshot.exists]
        taken = states.count("claimed") + states.count("published")
        if taken >= least:
            break
        time.sleep(0.05)
    return taken


def test_one_terminal_event_per_job_through_freezes_and_a_killed_relay(
    own_stack: Stack, start_own_relay: StartRelay, secret: str
) -> None:
    stack = own_stack
    started = time.monotonic()
    jobs_collection, deliveries = "jobs_faults", "deliveries_faults"
    subscriptions = {kind: stack.subscribe(f"gemini-{kind}") for kind in TERMINAL_KINDS}
    env = {
        "RELAY_CLAIM_LEASE_SECONDS": str(LEASE_SECONDS),
        "RELAY_JOBS_COLLECTION": jobs_collection,
        "RELAY_DEDUP_COLLECTION": deliveries,
        "THREADS": "40",  # as deployed (infra/): every retry gets a thread, none queues
    }
    store = FirestoreJobs(lambda: stack.db, jobs_collection, LEASE_SECONDS, 72)

    with FakeGemini() as fake, ThreadPoolExecutor(64) as pool:
        gemini_jobs = FakeJobs(fake)
        first = make_jobs(gemini_jobs, store, 1, batches=12, watched=4)
        reconcile = ReconcileProcess(
            os.environ
            | stack.env()
            | env
            | {"GEMINI_API_KEY": "test-key", "GEMINI_API_BASE_URL": fake.url}
        )
        try:
            freezes = Freezes()
            relays = [start_own_relay(**env)]
            gemini = Gemini(secret, relays[0])

            with runs(reconcile, loops=2) as scheduler:
                # 1. Firestore frozen past the lease while deliveries and runs are mid-claim,
                # mid-publish and mid-record; more deliveries arrive while it is frozen, their
                # calls land at the thaw, after their requests gave up.
                sent = send(pool, gemini, first[::2])
                wait_for_claims(stack, jobs_collection, first[::2], 3, 5)
                with freezes.timed(), frozen(stack.firestore_emulator):
                    time.sleep(FREEZE_SECONDS - LATE_SECONDS)
                    sent += send(pool, gemini, first[1::2])
                    time.sleep(LATE_SECONDS)
                answered = [future.result(timeout=DELIVERY_SECONDS + 30) for future in sent]
                marks = [time.monotonic()]

                # 2. A relay process killed mid-publish: Pub/Sub frozen while its deliveries
                # publish, then SIGKILL, then the thaw. What Pub/Sub had received it stores
                # (the crash window: published, and no record will ever say so).
                second = make_jobs(gemini_jobs, store, 2, batches=10, watched=3)
                every = first + second
                with frozen(stack.pubsub_emulator):
                    sent = send(pool, gemini, second)
                    wait_for_claims(stack, jobs_collection, second, 3, PUBSUB_FREEZE_SECONDS)
                    killed = gemini.kill()
                    killed_at = time.monotonic()
                relays.append(start_own_relay(**env))
                gemini.serve_with(relays[-1])
                answered += [future.result(timeout=DELIVERY_SECONDS + 30) for future in sent]
                marks.append(time.monotonic())

                # 3. `reconcile` publishes, then Firestore stalls before its record write, for
                # less than the lease: the run must still record what it published before the
                # lease ends, so neither the next run nor Gemini's late delivery publishes again.
                try:
                    freeze(stack.pubsub_emulator)
                    third = make_jobs(gemini_jobs, store, 3, batches=4, watched=0)
                    every += third
                    # Only until one run holds a claim: its publish waits for the thaw.
                    stalled = wait_for_claims(stack, jobs_collection, third, 1, CLAIM_WAIT_SECONDS)
                    freeze(stack.firestore_emulator)
                    thaw(stack.pubsub_emulator)  # the publishes are confirmed, the records wait
                    time.sleep(STALL_SECONDS)
                finally:
                    thaw(stack.pubsub_emulator)
                    thaw(stack.firestore_emulator)
                time.sleep(LEASE_SECONDS + 1)
                sent = send(pool, gemini, third)
                answered += [future.result(timeout=DELIVERY_SECONDS + 30) for future in sent]
                marks.append(time.monotonic())
            # Every lease the dead process held is over; a last run settles what is left.
            time.sleep(max(0.0, killed_at + LEASE_SECONDS + 1 - time.monotonic()))
            final_status, final = reconcile.run()
        finally:
            reconcile.stop()

    events = [
        (kind, message)
        for kind, subscription in subscriptions.items()
        for message in stack.pull(subscription, settle=1.5)
    ]
    by_job: dict[JobKey, list[Any]] = defaultdict(list)
    for kind, message in events:
        event = json.loads(message.message.data)
        if event["type"].startswith(f"{kind}.") and event["data"]["terminal"] is True:
            by_job[JobKey(kind, job_id_of(event["subject"]))].append(message)
    recorded = recorded_message_ids(stack, every, jobs_collection, deliveries)
    # A job record left claimed would be published again by the next run.
    states = job_states(stack, every, jobs_collection)
    unsettled = {str(j.key): states.get(j.key) for j in every if states.get(j.key) != "published"}
    missing = [j.key for j in every if not by_job[j.key]]
    strangers = set(by_job) - {j.key for j in every}
    doubles = {j: by_job[j.key] for j in every if len(by_job[j.key]) > 1}
    windows = {
        j: window(j, messages, recorded, killed, freezes.spans) for j, messages in doubles.items()
    }
    outside = sorted(f"{j.key.kind} {j.key.job_id}" for j, why in windows.items() if why is None)
    took = time.monotonic() - started
    print(
        f"\nfault test: jobs={len(every)} missing={len(missing)} doubles={len(doubles)} "
        f"(crash window {len(doubles) - len(outside)}: process killed "
        f"{list(windows.values()).count('killed')}, Firestore frozen "
        f"{list(windows.values()).count('frozen')}); killed in flight={len(killed)}; "
        f"published_twice lines={published_twice(relays)}; "
        f"reconcile runs={len(scheduler.summaries) + 1}; {took:.0f} s (phase 1 "
        f"{marks[0] - started:.0f} s, 2 {marks[1] - marks[0]:.0f} s, "
        f"3 {marks[2] - marks[1]:.0f} s with {stalled} records stalled)"
    )
    for j, messages in doubles.items():
        print(
            describe(
                j, messages, recorded, stack, (jobs_collection, deliveries), windows[j], gemini
            )
        )

    assert not strangers, f"events for jobs never made: {strangers}"
    assert missing == [], f"jobs without a terminal event: {missing}"
    assert outside == [], "jobs with two terminal events outside the crash window (see above)"
    assert unsettled == {}, "job records not published after the last run"
    assert all(outcome in ("accepted", "duplicate") for outcome in answered)
    assert (final_status, final["status"], final["errors"]) == (200, "completed", 0)


def job_states(stack: Stack, jobs: list[Job], collection: str) -> dict[JobKey, Any]:
    by_id = {j.key.document_id: j.key for j in jobs}
    refs = [stack.db.collection(collection).document(doc_id) for doc_id in by_id]
    return {
        by_id[snapshot.id]: (snapshot.to_dict() or {}).get("state")
        for snapshot in stack.db.get_all(refs, timeout=30)
        if snapshot.exists
    }


def recorded_message_ids(
    stack: Stack, jobs: list[Job], jobs_collection: str, deliveries: str
) -> set[str]:
    """The message ids the records say were published: the publishes some path finished."""
    refs = [stack.db.collection(jobs_collection).document(j.key.document_id) for j in jobs]
    refs += [stack.db.collection(deliveries).document(document_id(j.webhook_id)) for j in jobs]
    return {
        str(snapshot.get("message_id"))
        for snapshot in stack.db.get_all(refs, timeout=30)
        if snapshot.exists and snapshot.to_dict().get("message_id")  # type: ignore[union-attr]
    }


def window(
    j: Job,
    messages: list[Any],
    recorded: set[str],
    killed: set[str],
    freezes: list[tuple[float, float]],
) -> str | None:
    """Why this double is the crash window, or None. The window: one of the two events was
    published by a path that could not record it, and no record knows it, because its process
    was killed with this delivery in flight, or Firestore froze between its publish and its
    record write (the record's write failing after a confirmed publish: README, "Delivery
    guarantees")."""
    unrecorded = [m.message for m in messages if m.message.message_id not in recorded]
    if len(messages) != 2 or len(unrecorded) != 1:
        return None
    [message] = unrecorded
    attributes = message.attributes
    delivered = attributes["signature"] == "hmac" and attributes["webhook_id"] == j.webhook_id
    if delivered and j.webhook_id in killed:
        return "killed"
    published = message.publish_time.timestamp()
    if any(start - RECORD_SLACK_SECONDS <= published <= end for start, end in freezes):
        return "frozen"
    return None


def published_twice(relays: list[RelayServer]) -> int:
    return sum(line.get("status") == "published_twice" for r in relays for line in r.log_lines())


def describe(
    j: Job,
    messages: list[Any],
    recorded: set[str],
    stack: Stack,
    collections: tuple[str, str],
    why: str | None,
    gemini: Gemini,
) -> str:
    """One double, for the report: who published each event, and what the records say."""
    jobs_collection, deliveries = collections
    record = stack.db.collection(jobs_collection).document(j.key.document_id).get().to_dict() or {}
    delivery = stack.record(deliveries, j.webhook_id) or {}
    published = [
        f"{m.message.attributes['signature']} {m.message.message_id}"
        f"{'' if m.message.message_id in recorded else ' (unrecorded)'}"
        f" at {m.message.publish_time.isoformat()}"
        for m in messages
    ]
    return (
        f"  double phase={j.phase} {j.key.kind} {j.key.job_id} "
        f"{f'crash window ({why})' if why else 'OUTSIDE the crash window'}: {published}; "
        f"job record {record.get('state')} owner={record.get('owner')} "
        f"message={record.get('message_id')}; delivery record {delivery.get('state')} "
        f"attempts={delivery.get('attempts')} message={delivery.get('message_id')}; "
        f"answers {gemini.answers[j.webhook_id]}"
    )
