"""`reconcile` bounded and fair, against the real emulators and the fake Gemini API: the lease
covers every publish, the record write survives a stalled Firestore, every watched job is
checked in turn, each step has its own budget, listings end, and a run without a key says so."""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import PROJECT, Stack
from tests.integration.test_reconcile import (
    LONG_AGO,
    PUBLIC_URL,
    Net,
    events,
    later,
    log_lines,
    serve,
    token,
)
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_gemini_jobs import FakeJobs
from webhook_relay.claim import Claimed, FirestoreClaims
from webhook_relay.config import MIN_CLAIM_LEASE_SECONDS
from webhook_relay.deadline import Deadline
from webhook_relay.emulators import Emulator
from webhook_relay.jobs import CHECKED_FIELD, NEVER, SCAN_DOCUMENT, FirestoreJobs, JobKey
from webhook_relay.publish import PubSubPublisher

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def net(stack: Stack) -> Iterator[Net]:
    with FakeGemini() as fake:
        yield Net(stack, fake, FakeJobs(fake), "jobs_" + token())


def gets(net: Net, interaction_id: str) -> int:
    return len(net.fake.calls_to("GET", rf"/v1/interactions/{interaction_id}"))


def record_of(net: Net, key: JobKey) -> dict[str, Any]:
    snapshot = net.stack.db.collection(net.collection).document(key.document_id).get()
    return snapshot.to_dict() or {}


# --- item 4: no publish unless the lease covers it -----------------------------------------------


def test_a_claim_whose_lease_no_longer_covers_the_publish_is_given_back(
    net: Net, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    subscription = stack.subscribe("gemini-batch")
    name = net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)

    # The lease floor, and a claim answered 6 s after it was taken (the run's clock 6 s on):
    # 9 s of lease left, under a publish and its record write (4 + 4 s) and the margin (2 s).
    late = net.reconciler(lease=MIN_CLAIM_LEASE_SECONDS, clock=later(6), store_clock=time.time)
    slow = late.run()

    assert (slow.reconciled, slow.errors) == (0, 1)
    assert events(stack, subscription) == []
    [short] = [line for line in log_lines(capsys) if line.get("status") == "lease_short"]
    assert (short["severity"], short["job"]) == ("WARNING", name)
    # Given back at once, not left to its lease: the next run, on time, publishes it once.
    on_time = net.reconciler(lease=MIN_CLAIM_LEASE_SECONDS).run()
    assert (on_time.reconciled, on_time.errors) == (1, 0)
    assert [e["subject"] for e in events(stack, subscription)] == [name]


# --- item 2: the record write after a publish is retried -----------------------------------------


class StallAfterPublish:
    """The real publisher; once Pub/Sub has confirmed, Firestore stops dead for `seconds`
    (SIGSTOP, as `harness.frozen`): the run's record write meets a stalled store."""

    def __init__(self, inner: PubSubPublisher, emulator: Emulator, seconds: float) -> None:
        self._inner, self._emulator, self._seconds = inner, emulator, seconds
        self.thaw: threading.Timer | None = None

    def publish(self, topic: str, data: bytes, attributes: Any, deadline: Deadline) -> str:
        message_id = self._inner.publish(topic, data, attributes, deadline)
        assert self._emulator.pid is not None
        os.killpg(self._emulator.pid, signal.SIGSTOP)
        self.thaw = threading.Timer(self._seconds, self.resume)
        self.thaw.start()
        return message_id

    def resume(self) -> None:
        assert self._emulator.pid is not None
        os.killpg(self._emulator.pid, signal.SIGCONT)


def test_the_record_write_after_a_publish_outlasts_a_firestore_stall(
    own_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    subscription = own_stack.subscribe("gemini-batch")
    with FakeGemini() as fake:
        net = Net(own_stack, fake, FakeJobs(fake), "jobs_" + token())
        name = net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)
        # 7 s: longer than one Firestore call of a run may take (5 s), shorter than the
        # record write's retries (12 s).
        stall = StallAfterPublish(
            PubSubPublisher(lambda: own_stack.publisher, PROJECT),
            own_stack.firestore_emulator,
            7.0,
        )
        try:
            summary = net.reconciler(publisher=stall).run()
        finally:
            if stall.thaw is not None:
                stall.thaw.join()

    assert (summary.reconciled, summary.errors) == (1, 0)
    key = JobKey("batch", name.rpartition("/")[2])
    assert record_of(net, key)["state"] == "published"
    assert len(events(own_stack, subscription)) == 1
    assert not [line for line in log_lines(capsys) if line.get("severity") == "ERROR"]


def test_a_job_left_claimed_by_a_delivery_that_published_is_adopted_not_published_again(
    net: Net, stack: Stack
) -> None:
    subscription = stack.subscribe("gemini-batch")
    deliveries = "deliveries_" + token()
    name = net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)
    key = JobKey("batch", name.rpartition("/")[2])
    # A delivery that claimed the job (its lease long past) and published, whose job record
    # write was lost: its own delivery record says published, the job's still `claimed`.
    hour_ago = FirestoreJobs(
        lambda: stack.db, net.collection, 30, 72, clock=lambda: time.time() - 3600
    )
    companion, _ = hour_ago.new_claim(key, "owner-1", "msg_1", "batch.succeeded", key.job_id)
    claims = FirestoreClaims(lambda: stack.db, deliveries, 30, 72)
    claimed = claims.claim("msg_1", "batch.succeeded", key.job_id, Deadline(), "owner-1", companion)
    assert isinstance(claimed, Claimed)
    claims.mark_published(claimed, "gemini-batch", "m-delivered", Deadline())
    assert record_of(net, key)["state"] == "claimed"
    env = net.env() | {
        "GEMINI_API_BASE_URL": net.fake.url,
        "RELAY_PUBLIC_URL": PUBLIC_URL,
        "RELAY_DEDUP_COLLECTION": deliveries,
    }

    with serve(env) as server:  # the function as deployed: its settings name the deliveries
        status, summary = server.run()

    assert (status, summary["reconciled"], summary["already_delivered"]) == (200, 0, 1)
    assert events(stack, subscription) == []
    record = record_of(net, key)
    assert (record["state"], record["message_id"]) == ("published", "m-delivered")


# --- item 5: every watched job checked in turn, its record kept ----------------------------------


def watch_running(net: Net, count: int) -> list[str]:
    store, ids = net.store(), []
    for n in range(count):
        interaction_id = f"i{n}_{token()}"
        net.jobs.add_interaction(interaction_id, "in_progress")
        store.watch(JobKey("interaction", interaction_id), interaction_id, Deadline(10))
        ids.append(interaction_id)
    return ids


def test_every_watched_job_is_checked_within_ceil_n_over_c_runs(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, per_run = 7, 3
    ids = watch_running(net, jobs)
    keys = [JobKey("interaction", i) for i in ids]
    expiry = {key: record_of(net, key)["expire_at"] for key in keys}
    capsys.readouterr()

    runs = [net.reconciler(watch_per_run=per_run).run() for _ in range(math.ceil(jobs / per_run))]

    assert all(gets(net, i) >= 1 for i in ids), [gets(net, i) for i in ids]
    assert sum(gets(net, i) for i in ids) == sum(r.checked_watched for r in runs) == 7 + 2
    assert [r.checked_watched for r in runs] == [3, 3, 3]
    # Still running when checked: its record lives on from the check, not from the watch.
    for key in keys:
        record = record_of(net, key)
        assert record["expire_at"] > expiry[key]
        assert isinstance(record[CHECKED_FIELD], datetime)
    # The report: per step, what is left, the budget. One INFO line per run, nothing per job.
    assert runs[0].oldest_unchecked is not None
    assert (runs[0].watching, runs[0].stopped_at_budget) == (3, False)
    lines = log_lines(capsys)
    summaries = [line for line in lines if line["message"] == "reconcile run"]
    assert [s["severity"] for s in summaries] == ["INFO"] * 3
    assert {"checked_batches", "checked_watched", "oldest_unchecked", "stopped_at_budget"} <= set(
        summaries[0]
    )
    assert [line for line in lines if line["severity"] == "INFO"] == summaries


def test_a_record_without_checked_at_is_still_checked(net: Net) -> None:
    # What a relay before `checked_at` left: a watched record without one (and the scan's
    # own record, which is no job).
    ids = watch_running(net, 2)
    old = JobKey("interaction", ids[0])
    ref = net.stack.db.collection(net.collection).document(old.document_id)
    ref.update({CHECKED_FIELD: firestore_delete()})

    first = net.reconciler().run()
    second = net.reconciler().run()

    assert first.backfilled == 1
    assert gets(net, ids[0]) == 2
    assert second.backfilled == 0
    assert record_of(net, old)[CHECKED_FIELD] > NEVER
    assert "state" not in (
        net.stack.db.collection(net.collection).document(SCAN_DOCUMENT).get().to_dict() or {}
    )


def firestore_delete() -> Any:
    from google.cloud import firestore  # noqa: PLC0415

    return firestore.DELETE_FIELD


def test_a_rate_limited_batch_listing_does_not_skip_the_watch_list(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)
    ids = watch_running(net, 2)
    net.fake.fail(r"/v1/batches", 429, times=1, method="GET")

    summary = net.reconciler().run()

    assert summary.rate_limited
    assert (summary.checked_batches, summary.checked_watched) == (0, 2)
    assert all(gets(net, i) == 1 for i in ids)


def test_the_batch_listing_leaves_the_watch_list_its_share_of_the_budget(net: Net) -> None:
    for n in range(40):
        net.jobs.add_batch(f"b{n}_{token()}", "JOB_STATE_RUNNING")
    ids = watch_running(net, 3)
    # Every Gemini call takes 20 s of the run's clock.
    clock = lambda: 20.0 * len(net.fake.calls)  # noqa: E731

    summary = net.reconciler(page_size=2, budget=240, monotonic=clock).run()

    pages = len(net.fake.calls_to("GET", r"/v1/batches"))
    assert summary.stopped_at_budget
    assert 0 < pages < 20  # stopped within its share, the listing unfinished
    assert summary.checked_watched >= 1
    assert sum(gets(net, i) for i in ids) == summary.checked_watched


# --- item 6: listings end ----------------------------------------------------------------------


def test_the_batch_listing_stops_at_a_page_older_than_the_lookback(net: Net) -> None:
    now = datetime.now(UTC)
    for n in range(4):
        net.jobs.add_batch(f"new{n}_{token()}", "JOB_STATE_RUNNING", create_time=now)
    for n in range(20):
        old = now - timedelta(hours=73 + n)
        net.jobs.add_batch(f"old{n}_{token()}", "JOB_STATE_RUNNING", create_time=old)

    summary = net.reconciler(page_size=2).run()

    # Two pages of recent batches, one wholly older than the look-back (72 h), then no more.
    assert len(net.fake.calls_to("GET", r"/v1/batches")) == 3
    assert summary.checked_batches == 4


def test_the_batch_listing_stops_at_its_page_cap(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(12):
        net.jobs.add_batch(f"b{n}_{token()}", "JOB_STATE_RUNNING")

    summary = net.reconciler(page_size=2, max_batch_pages=3).run()

    assert len(net.fake.calls_to("GET", r"/v1/batches")) == 3
    assert (summary.checked_batches, summary.errors) == (6, 1)
    statuses = [line.get("status") for line in log_lines(capsys)]
    assert "batch_pages_capped" in statuses


# --- issue 18 item 7: no key yet -----------------------------------------------------------------


def test_reconcile_starts_without_a_key_and_answers_503_until_it_has_one(
    net: Net, stack: Stack, tmp_path: Path
) -> None:
    subscription = stack.subscribe("gemini-batch")
    name = net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)
    key_file = tmp_path / "gemini-api-key"
    key_file.write_text("")  # the secret's first version, stored before the key was at hand
    env = net.env() | {
        "GEMINI_API_BASE_URL": net.fake.url,
        "RELAY_PUBLIC_URL": PUBLIC_URL,
        "GEMINI_API_KEY": "",
        "GEMINI_API_KEY_FILE": str(key_file),
    }

    with serve(env) as server:
        status, summary = server.run()
        log, called = server.log.read_text(), len(net.fake.calls)
        key_file.write_text("test-key\n")  # a new version, as the volume shows it
        then_status, then = server.run()

    assert (status, summary["status"]) == (503, "unavailable")
    errors = [json.loads(line) for line in log.splitlines() if '"ERROR"' in line]
    assert len(errors) == 1
    assert errors[0]["variable"] == "GEMINI_API_KEY"
    assert "GEMINI_API_KEY" in errors[0]["message"]
    assert called == 0  # nothing tried without a key
    assert (then_status, then["status"], then["reconciled"]) == (200, "completed", 1)
    assert [e["subject"] for e in events(stack, subscription)] == [name]


# --- issue 17 item 6: the command line shows it is alive -----------------------------------------


def test_cli_reconcile_prints_progress_to_stderr_and_the_summary_to_stdout(net: Net) -> None:
    net.jobs.add_batch("b_" + token(), "JOB_STATE_RUNNING")
    # The batch listing answers only once the command has printed 3 progress lines (or after
    # 30 s): lines printed while the run waits, not only at its start or its end.
    net.jobs.gate = threading.Event()
    env = net.env() | {
        "GEMINI_API_KEY": "test-key",
        "GEMINI_API_BASE_URL": net.fake.url,
        "RELAY_PUBLIC_URL": PUBLIC_URL,
        "PATH": os.environ["PATH"],
    }
    command = [
        str(Path(sys.executable).with_name("webhook-relay")),
        *("reconcile", "--progress-every", "0.2"),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    progress: list[str] = []
    assert process.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while len(progress) < 3 and time.monotonic() < deadline:
            if not selector.select(1):
                continue
            line = process.stderr.readline()
            if not line:
                break
            if line.startswith("reconcile: "):
                progress.append(line)
    seen_while_waiting = len(progress)
    net.jobs.gate.set()
    out, err = process.communicate(timeout=60)

    assert seen_while_waiting == 3, err
    assert process.returncode == 0
    lines = out.splitlines()
    summary = json.loads(lines[-1])
    assert (summary["status"], summary["checked_batches"]) == ("completed", 1)
    assert not [line for line in lines if line.startswith("reconcile: ")]
