"""The safety net against the real emulators and the fake Gemini API (driven through the SDK):
one terminal event per job, whichever of a delivery and a reconcile run publishes it."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.integration.conftest import StartRelay
from tests.integration.harness import (
    PREFIX,
    PROJECT,
    Answer,
    ReconcileProcess,
    RelayServer,
    Stack,
)
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_gemini_jobs import FakeJobs
from tests.support.signing import headers_v1
from webhook_relay.claim import Claimed, FirestoreClaims
from webhook_relay.cli import cli
from webhook_relay.deadline import Deadline
from webhook_relay.emulators import free_port
from webhook_relay.jobs import FirestoreJobs, JobKey
from webhook_relay.publish import Publisher, PubSubPublisher
from webhook_relay.reconcile import (
    MAX_BATCH_PAGES,
    RUN_BUDGET_SECONDS,
    STORE_CALL_SECONDS,
    WATCH_PER_RUN,
    Policy,
    Reconciler,
    Summary,
)
from webhook_relay.reconcile_gemini import SdkGeminiJobs, client_for_reconcile
from webhook_relay.routing import parse_routes
from webhook_relay.subscriber import parse_event

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_URL = "https://relay.example.com/"
LONG_AGO = timedelta(hours=1)
RACE_ROUNDS = 100


@dataclass
class Net:
    stack: Stack
    fake: FakeGemini
    jobs: FakeJobs
    collection: str

    def reconciler(
        self,
        *,
        grace: int = 0,
        reenable: bool = False,
        clock: Callable[[], float] = time.time,
        page_size: int = 100,
        budget: float = RUN_BUDGET_SECONDS,
        deliveries: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        lease: int = 30,
        watch_per_run: int = WATCH_PER_RUN,
        max_batch_pages: int = MAX_BATCH_PAGES,
        store_clock: Callable[[], float] | None = None,
        publisher: Publisher | None = None,
    ) -> Reconciler:
        client = client_for_reconcile(
            {"GEMINI_API_KEY": "test-key", "GEMINI_API_BASE_URL": self.fake.url}
        )
        policy = Policy(
            PUBLIC_URL,
            timedelta(seconds=grace),
            timedelta(hours=72),
            reenable,
            budget,
            deliveries,
            watch_per_run,
            max_batch_pages,
        )
        return Reconciler(
            SdkGeminiJobs(client, page_size),
            self.store(lease, store_clock or clock),
            publisher or PubSubPublisher(lambda: self.stack.publisher, PROJECT),
            parse_routes(None, PREFIX),
            policy,
            clock=clock,
            monotonic=monotonic,
        )

    def store(self, lease: int = 30, clock: Callable[[], float] = time.time) -> FirestoreJobs:
        return FirestoreJobs(
            lambda: self.stack.db,
            self.collection,
            lease,
            72,
            clock=clock,
            call_seconds=STORE_CALL_SECONDS,
        )

    def env(self) -> dict[str, str]:
        return self.stack.env() | {"RELAY_JOBS_COLLECTION": self.collection}


@pytest.fixture
def net(stack: Stack) -> Iterator[Net]:
    with FakeGemini() as fake:
        yield Net(stack, fake, FakeJobs(fake), "jobs_" + secrets.token_hex(6))


def token() -> str:
    return secrets.token_hex(5)


def events(stack: Stack, subscription: str) -> list[dict[str, Any]]:
    return [json.loads(m.message.data) for m in stack.pull(subscription)]


def envelope(event_type: str, data: dict[str, Any]) -> bytes:
    return json.dumps(
        {"type": event_type, "version": "v1", "timestamp": "2026-11-24T10:00:00Z", "data": data}
    ).encode()


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def later(seconds: float) -> Callable[[], float]:
    return lambda: time.time() + seconds


# --- batches -----------------------------------------------------------------------------------


def test_succeeded_batch_without_delivery_gets_one_event_after_grace(
    net: Net,
    stack: Stack,
    start_relay: StartRelay,
    secret: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    subscription = stack.subscribe("gemini-batch")
    ended = datetime.now(UTC) - timedelta(seconds=60)
    name = net.jobs.add_batch("b_" + token(), end_time=ended, responses_file="files/out-1")
    net.jobs.add_batch("b_running_" + token(), "JOB_STATE_RUNNING")

    early = net.reconciler(grace=900).run()
    assert (early.checked, early.pending, early.reconciled) == (2, 1, 0)
    assert events(stack, subscription) == []

    after = net.reconciler(grace=900, clock=later(900)).run()
    again = net.reconciler(grace=900, clock=later(900)).run()

    assert (after.reconciled, again.reconciled, again.already_delivered) == (1, 0, 1)
    [event] = stack.pull(subscription)
    parsed = parse_event(event.message)
    assert parsed.id == f"reconciled:batch.succeeded:{name}"
    assert (parsed.type, parsed.signature, parsed.job_id) == ("batch.succeeded", "reconciled", name)
    assert (parsed.output_uri, parsed.file_name, parsed.error) == (
        "files/out-1",
        "files/out-1",
        None,
    )
    assert datetime.fromisoformat(parsed.time) == ended  # the batch's own end time
    assert dict(event.message.attributes)["signature"] == "reconciled"
    lines = log_lines(capsys)
    [missed] = [line for line in lines if line.get("status") == "missed_event_reconciled"]
    assert (missed["severity"], missed["job"], missed["event_type"]) == (
        "WARNING",
        name,
        "batch.succeeded",
    )
    summaries = [line for line in lines if line["message"] == "reconcile run"]
    assert [s["reconciled"] for s in summaries] == [0, 1, 0]
    assert {"checked", "reconciled", "already_delivered", "watching", "errors"} <= set(summaries[0])

    # Gemini's delivery, late: the job's event is out already. `data.id` is the bare id here:
    # `batch_x` and `batches/batch_x` are one job.
    relay = start_relay(RELAY_JOBS_COLLECTION=net.collection)
    body = envelope("batch.succeeded", {"id": name.rpartition("/")[2]})
    answer = relay.post(body, headers_v1(secret, body))
    assert (answer.status, answer.body["status"]) == (200, "duplicate")
    assert events(stack, subscription) == []


def test_delivered_batch_is_not_reconciled(
    net: Net, stack: Stack, start_relay: StartRelay, secret: str
) -> None:
    subscription = stack.subscribe("gemini-batch")
    name = net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)
    relay = start_relay(RELAY_JOBS_COLLECTION=net.collection)
    body = envelope("batch.succeeded", {"id": name})

    assert relay.post(body, headers_v1(secret, body)).body["status"] == "accepted"
    summary = net.reconciler().run()

    assert (summary.reconciled, summary.already_delivered) == (0, 1)
    assert [e["signature"] for e in events(stack, subscription)] == ["hmac"]


def test_delivery_and_reconcile_racing_publish_one_event(
    net: Net, stack: Stack, start_relay: StartRelay, secret: str
) -> None:
    subscription = stack.subscribe("gemini-batch")
    relay = start_relay(RELAY_JOBS_COLLECTION=net.collection)
    reconciler = net.reconciler()
    results: Counter[str] = Counter()

    for round_ in range(RACE_ROUNDS):
        net.jobs.batches.clear()
        name = net.jobs.add_batch(f"race{round_}_{token()}", end_time=datetime.now(UTC) - LONG_AGO)
        body = envelope("batch.succeeded", {"id": name})
        headers = headers_v1(secret, body)
        answer, summary = race(relay, reconciler, body, headers)
        # Gemini retries a 409: by now the job is published, so the retry is a duplicate.
        retry = relay.post(body, headers_v1(secret, body, headers["webhook-id"]))

        published = [e for e in events(stack, subscription) if e["subject"] == name]
        outcome = f"delivery {answer.body['status']}, reconcile {summary.reconciled}"
        results[outcome] += 1
        assert len(published) == 1, f"round {round_}: {outcome}: {len(published)} events"
        assert answer.body["status"] in ("accepted", "duplicate", "in_flight")
        assert (answer.body["status"] == "accepted") == (summary.reconciled == 0)
        assert retry.body["status"] == "duplicate"
        assert summary.errors == 0

    print(f"\n{RACE_ROUNDS} rounds: {dict(results)}")  # the rounds' results, for the report


def test_job_delivered_before_job_records_existed_is_not_published_again(
    net: Net, stack: Stack
) -> None:
    subscription = stack.subscribe("gemini-batch")
    deliveries = "deliveries_" + token()
    name = net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)
    # What a relay without job records left: the delivery record alone, `data.id` a bare id.
    claims = FirestoreClaims(lambda: stack.db, deliveries, 30, 72)
    claim = claims.claim("msg_old", "batch.succeeded", name.rpartition("/")[2], Deadline())
    assert isinstance(claim, Claimed)
    claims.mark_published(claim, "gemini-batch", "m-old", Deadline())

    first = net.reconciler(deliveries=deliveries).run()
    second = net.reconciler(deliveries=deliveries).run()

    assert (first.reconciled, first.already_delivered) == (0, 1)
    assert (second.reconciled, second.already_delivered) == (0, 1)
    assert events(stack, subscription) == []
    record = net.store().records([JobKey("batch", name.rpartition("/")[2])], Deadline())
    assert [r["message_id"] for r in record.values()] == ["m-old"]


def test_a_run_stops_at_its_budget_and_the_next_one_goes_on(net: Net, stack: Stack) -> None:
    subscription = stack.subscribe("gemini-batch")
    ended = datetime.now(UTC) - LONG_AGO
    names = {net.jobs.add_batch(f"b{n}_{token()}", end_time=ended) for n in range(6)}
    ticks = iter(range(0, 10_000, 5))  # every look at the budget's clock: 5 s later

    # 160 s: the webhook check's share (30 s; 2 looks), then half of what is left (about
    # 60 s) for the batches: their page and three jobs, before under one job's 28 s is left.
    short = net.reconciler(budget=160, monotonic=lambda: float(next(ticks))).run()
    rest = net.reconciler().run()

    assert (short.status, short.reconciled) == ("stopped_at_budget", 3)
    assert (rest.status, rest.reconciled, rest.already_delivered) == ("completed", 3, 3)
    assert sorted(e["subject"] for e in events(stack, subscription)) == sorted(names)


def race(
    relay: RelayServer, reconciler: Reconciler, body: bytes, headers: dict[str, str]
) -> tuple[Answer, Summary]:
    """A delivery and a run, released at the same instant."""
    barrier = threading.Barrier(2)

    def deliver() -> Answer:
        barrier.wait()
        return relay.post(body, headers)

    def run() -> Summary:
        barrier.wait()
        return reconciler.run()

    with ThreadPoolExecutor(2) as pool:
        delivered, ran = pool.submit(deliver), pool.submit(run)
        return delivered.result(), ran.result()


def test_two_runs_at_once_publish_nothing_twice(net: Net, stack: Stack) -> None:
    subscription = stack.subscribe("gemini-batch")
    ended = datetime.now(UTC) - LONG_AGO
    names = {net.jobs.add_batch(f"b{n}_{token()}", end_time=ended) for n in range(12)}
    barrier = threading.Barrier(2)

    def run() -> Summary:
        barrier.wait()
        return net.reconciler(page_size=5).run()

    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda _: run(), range(2)))
    # Both runs may give up on the same job while their transactions wait on each other's
    # locks (each counts it `in_flight`, seen about once in six full test runs): nothing is
    # published for it, and the next run does it. Nothing is published twice either way.
    summaries.append(net.reconciler(page_size=5).run())

    published = events(stack, subscription)
    assert sorted(e["subject"] for e in published) == sorted(names)
    assert sum(s.reconciled for s in summaries) == len(names)
    assert all(s.errors == 0 for s in summaries)


def test_api_errors_mid_run_then_the_next_run_completes(
    net: Net, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    batches, interactions = stack.subscribe("gemini-batch"), stack.subscribe("gemini-interaction")
    ended = datetime.now(UTC) - LONG_AGO
    batch_names = {net.jobs.add_batch(f"b{n}_{token()}", end_time=ended) for n in range(6)}
    store = net.store()
    watched = set()
    for n in range(3):
        name = net.jobs.add_interaction(f"i{n}_{token()}", "completed", updated=ended)
        store.watch(JobKey("interaction", name.rpartition("/")[2]), name, _deadline())
        watched.add(name.rpartition("/")[2])  # a delivery's `data.id`: the bare id
    # Listing batches fails (500); later, one interaction's get is rate-limited (429).
    net.fake.fail(r"/v1/batches", 500, times=1, method="GET")
    limited = sorted(watched)[1]
    net.fake.fail(rf"/v1/interactions/{limited}", 429, times=1)

    first = net.reconciler(page_size=3).run()

    assert first.errors == 2
    assert first.reconciled < len(watched)  # the gets stopped at the 429
    failures = [line for line in log_lines(capsys) if line.get("status") == "gemini_api_error"]
    assert [f.get("rate_limited") for f in failures] == [False, True]
    # One attempt per call: the SDK's retries are off, the next run is the retry.
    assert len(net.fake.calls_to("GET", r"/v1/batches")) == 1
    assert len(net.fake.calls_to("GET", rf"/v1/interactions/{limited}")) == 1
    second = net.reconciler(page_size=3).run()

    assert second.errors == 0
    assert first.reconciled + second.reconciled == len(batch_names) + len(watched)
    assert sorted(e["subject"] for e in events(stack, batches)) == sorted(batch_names)
    assert sorted(e["subject"] for e in events(stack, interactions)) == sorted(watched)


# --- watched interactions and videos ------------------------------------------------------------


def test_watched_interaction_ending_incomplete_yields_interaction_incomplete(
    net: Net, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import webhook_relay  # noqa: PLC0415 (the public `watch`, as an application calls it)

    subscription = stack.subscribe("gemini-interaction")
    interaction_id = "int_" + token()
    net.jobs.add_interaction(interaction_id, "in_progress")
    for variable, value in net.env().items():
        monkeypatch.setenv(variable, value)

    assert webhook_relay.watch(interaction_id) is True  # a bare id is an interaction
    assert webhook_relay.watch(f"interactions/{interaction_id}") is False
    running = net.reconciler().run()
    net.jobs.add_interaction(
        interaction_id,
        "incomplete",
        updated=datetime.now(UTC) - LONG_AGO,
        user_metadata={"order": "A-7"},
    )
    ended = net.reconciler().run()
    after = net.reconciler().run()

    assert (running.watching, running.reconciled) == (1, 0)
    assert (ended.watching, ended.reconciled) == (1, 1)
    assert (after.watching, after.reconciled) == (0, 0)
    [event] = events(stack, subscription)
    assert event["type"] == "interaction.incomplete"
    # What a delivery carries: the bare id, as subject and job_id alike.
    assert event["id"] == f"reconciled:interaction.incomplete:{interaction_id}"
    assert (event["subject"], event["data"]["job_id"]) == (interaction_id, interaction_id)
    assert event["data"]["user_metadata"] == {"order": "A-7"}
    assert event["data"]["terminal"] is True


def test_interaction_requiring_action_is_never_synthesized(net: Net, stack: Stack) -> None:
    subscription = stack.subscribe("gemini-interaction")
    name = net.jobs.add_interaction(
        "int_" + token(), "requires_action", updated=datetime(2026, 1, 1, tzinfo=UTC)
    )
    net.store().watch(JobKey("interaction", name.rpartition("/")[2]), name, _deadline())

    summary = net.reconciler().run()

    assert (summary.checked, summary.reconciled, summary.watching) == (1, 0, 1)
    assert events(stack, subscription) == []


def test_failed_video_watched_from_the_command_line_yields_video_failed(
    net: Net, stack: Stack
) -> None:
    subscription = stack.subscribe("gemini-video")
    name = f"models/veo-3.1-generate-preview/operations/op_{token()}"
    net.jobs.add_video(name, done=True, error={"code": 3, "message": "prompt refused"})

    result = CliRunner().invoke(cli, ["watch", name, "--project", PROJECT], env=net.env())
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"watching video {name}"
    # No end time in the API: the grace period counts from the first run that saw it done.
    first = net.reconciler(grace=600).run()
    second = net.reconciler(grace=600, clock=later(601)).run()

    assert (first.pending, first.reconciled, second.reconciled) == (1, 0, 1)
    [event] = events(stack, subscription)
    assert event["type"] == "video.failed"
    assert event["data"]["error"] == {"code": 3, "message": "prompt refused"}
    assert event["data"]["job_id"] == name


# --- webhook health -------------------------------------------------------------------------------


@pytest.mark.parametrize("reenable", [False, True])
def test_disabled_webhook_is_an_error_line_and_reenabled_when_configured(
    net: Net, capsys: pytest.CaptureFixture[str], reenable: bool
) -> None:
    hook = net.fake.add_webhook(PUBLIC_URL, state="disabled_due_to_failed_deliveries")
    net.fake.add_webhook(
        "https://elsewhere.example.com/", state="disabled_due_to_failed_deliveries"
    )

    net.reconciler(reenable=reenable).run()

    lines = [line for line in log_lines(capsys) if "status" in line]
    [disabled] = [line for line in lines if line["status"] == "webhook_disabled"]
    assert disabled["severity"] == "ERROR"
    assert hook.id in disabled["message"]
    reenabled = [line for line in lines if line["status"] == "webhook_reenabled"]
    assert len(reenabled) == int(reenable)
    assert hook.state == ("enabled" if reenable else "disabled_due_to_failed_deliveries")


def test_webhook_a_person_disabled_is_left_alone(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = net.fake.add_webhook(PUBLIC_URL, state="disabled")

    net.reconciler(reenable=True).run()

    statuses = {line.get("status"): line for line in log_lines(capsys)}
    assert statuses["webhook_disabled_by_user"]["severity"] == "INFO"
    assert "webhook_disabled" not in statuses
    assert hook.state == "disabled"
    assert not net.fake.calls_to("PATCH", r"/v1/webhooks/.*")


def test_no_webhook_registered_is_a_warning(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    net.reconciler().run()
    [missing] = [line for line in log_lines(capsys) if line.get("status") == "webhook_missing"]
    assert missing["severity"] == "WARNING"


# --- the HTTP function ----------------------------------------------------------------------------


@contextmanager
def serve(env: dict[str, str]) -> Iterator[ReconcileProcess]:
    # Only what `reconcile` needs: no signing secret, no key set.
    server = ReconcileProcess({"PATH": "/usr/bin:/bin", "GEMINI_API_KEY": "test-key", **env})
    try:
        yield server
    finally:
        server.stop()


def test_reconcile_function_answers_its_summary(net: Net, stack: Stack) -> None:
    subscription = stack.subscribe("gemini-batch")
    name = net.jobs.add_batch("b_" + token(), end_time=datetime.now(UTC) - LONG_AGO)
    env = net.env() | {"GEMINI_API_BASE_URL": net.fake.url, "RELAY_PUBLIC_URL": PUBLIC_URL}

    with serve(env) as server:
        status, summary = server.run()

    assert status == 200
    assert (summary["status"], summary["reconciled"], summary["errors"]) == ("completed", 1, 0)
    assert [e["subject"] for e in events(stack, subscription)] == [name]


def test_reconcile_function_is_503_when_it_reaches_nothing() -> None:
    closed = f"127.0.0.1:{free_port()}"
    env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": closed,
        "PUBSUB_EMULATOR_HOST": closed,
        "GEMINI_API_BASE_URL": f"http://{closed}",
    }
    with serve(env) as server:
        status, summary = server.run()

    assert status == 503
    assert summary["status"] == "unavailable"
    assert summary["errors"] >= 2


def _deadline() -> Deadline:
    return Deadline(10)
