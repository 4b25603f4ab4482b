"""Job identity, the synthesized event, the SDK reading the fake's jobs, reconcile's settings,
and the entry points' imports. No emulators here (tests/integration/test_reconcile.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask
import pytest

from tests.support.fake_gemini import FakeGemini
from tests.support.fake_gemini_jobs import FakeJobs
from tests.support.signing import new_secret
from webhook_relay import reconcile
from webhook_relay.cli import main
from webhook_relay.config import MIN_CLAIM_LEASE_SECONDS
from webhook_relay.deadline import Deadline
from webhook_relay.errors import ConfigError
from webhook_relay.jobs import JobKey, job_id_of, key_for_event, key_for_name, kind_of_name
from webhook_relay.normalize import normalize
from webhook_relay.reconcile import ApiFailure, JobView, synthesize
from webhook_relay.reconcile_app import build, handle, load_reconcile_settings
from webhook_relay.reconcile_gemini import SdkGeminiJobs, client_for_reconcile
from webhook_relay.subscriber import parse_event

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("batches/abc", JobKey("batch", "abc")),
        ("interactions/xyz", JobKey("interaction", "xyz")),
        ("xyz", JobKey("interaction", "xyz")),
        ("models/veo-3/operations/op1", JobKey("video", "op1")),
        ("operations/op2", JobKey("video", "op2")),
        (" batches/abc ", JobKey("batch", "abc")),
    ],
)
def test_job_identity_from_a_name(name: str, key: JobKey) -> None:
    assert key_for_name(name) == key


@pytest.mark.parametrize("name", ["", "  ", "a b", "batches/", "files/f1", "batches/a/b", "x/y"])
def test_a_name_no_job_has_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a job name"):
        kind_of_name(name)


def test_one_job_whatever_the_name_form() -> None:
    assert job_id_of("batches/batch_123") == job_id_of("batch_123") == "batch_123"
    assert JobKey("batch", "a").document_id != JobKey("interaction", "a").document_id
    assert len(JobKey("batch", "a/b" * 600).document_id) == 64  # any id makes a document id


def _event(event_type: str, data: object) -> bytes:
    return json.dumps(
        {"type": event_type, "timestamp": "2026-11-24T10:00:00Z", "data": data}
    ).encode()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (_event("batch.succeeded", {"id": "batch_123"}), JobKey("batch", "batch_123")),
        (_event("batch.succeeded", {"id": "batches/batch_123"}), JobKey("batch", "batch_123")),
        (_event("interaction.failed", {"id": "interactions/i1"}), JobKey("interaction", "i1")),
        (_event("video.generated", {"id": "videos/v1"}), JobKey("video", "v1")),
        (_event("interaction.requires_action", {"id": "i1"}), None),  # not terminal
        (_event("interaction.cancelled", {"id": "i1"}), JobKey("interaction", "i1")),
        (_event("batch.cancelled", {"id": "b1"}), JobKey("batch", "b1")),
        # A type the catalog does not list never settles a job, even in a known family:
        # were `batch.running` to, the real `batch.succeeded` after it would be lost.
        (_event("batch.running", {"id": "b1"}), None),
        (_event("batch.completed", {"id": "b1"}), None),
        (_event("video.failed", {"id": "v1"}), None),  # reconcile's own type, never delivered
        (_event("interaction.incomplete", {"id": "i1"}), None),
        (_event("model.tuned", {"id": "t1"}), None),  # unknown kind
        (_event("relay.quarantined", {"id": "x"}), None),  # reserved
        (_event("webhook.ping", {}), None),
        (_event("batch.succeeded", {}), None),  # no id
        (b"not json", None),  # quarantined
    ],
)
def test_which_deliveries_claim_a_job(body: bytes, key: JobKey | None) -> None:
    assert key_for_event(normalize("msg_1", 1_700_000_000, body, "hmac")) == key


def test_synthesized_event_is_what_a_delivery_would_publish() -> None:
    ended = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    job = JobView(
        "batch",
        "batches/b1",
        "succeeded",
        terminal=True,
        output_uri="files/out",
        file_name="files/out",
        user_metadata={"order": 7},
    )

    event = synthesize(job, ended)
    parsed = parse_event(event.data())

    assert parsed.id == "reconciled:batch.succeeded:batches/b1"
    assert (parsed.type, parsed.signature, parsed.subject) == (
        "batch.succeeded",
        "reconciled",
        "batches/b1",
    )
    assert parsed.time == "2026-11-24T10:00:00Z"
    assert (parsed.kind, parsed.outcome, parsed.terminal) == ("batch", "succeeded", True)
    assert (parsed.job_id, parsed.output_uri, parsed.file_name) == (
        "batches/b1",
        "files/out",
        "files/out",
    )
    assert parsed.error is None
    assert parsed.user_metadata == {"order": 7}
    assert event.attributes()["event_type"] == "batch.succeeded"


def test_a_failed_job_never_has_a_null_error() -> None:
    job = JobView("video", "models/v/operations/op1", "failed", terminal=True)
    parsed = parse_event(synthesize(job, datetime.now(UTC)).data())
    assert parsed.type == "video.failed"
    assert parsed.error is not None
    assert parsed.error["code"]


@pytest.fixture
def fake() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


def sdk(fake: FakeGemini, page_size: int = 100) -> SdkGeminiJobs:
    client = client_for_reconcile({"GEMINI_API_KEY": "test-key", "GEMINI_API_BASE_URL": fake.url})
    return SdkGeminiJobs(client, page_size=page_size)


def test_the_sdk_reads_the_fakes_jobs_back(fake: FakeGemini) -> None:
    jobs = FakeJobs(fake)
    ended = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    for n in range(5):
        jobs.add_batch(f"b{n}", end_time=ended, responses_file="files/out")
    jobs.add_batch("running", "JOB_STATE_RUNNING")
    jobs.add_interaction("i1", "budget_exceeded", updated=ended, user_metadata={"k": "v"})
    jobs.add_interaction("i2", "requires_action")
    jobs.add_video("models/veo-3/operations/op1", done=True, error={"code": 13, "message": "x"})
    jobs.add_video(
        "models/veo-3/operations/op2", done=True, uri="https://g/v1/files/f9:download?alt=media"
    )
    gemini = sdk(fake, page_size=2)

    pages = list(gemini.batch_pages())

    assert [len(page) for page in pages] == [2, 2, 2]
    batches = {job.name: job for page in pages for job in page}
    assert batches["batches/b0"].terminal
    assert batches["batches/b0"].ended_at == ended
    assert batches["batches/b0"].output_uri == "files/out"
    assert not batches["batches/running"].terminal
    interaction = gemini.get("interaction", "i1")
    # The bare id, as a delivery's `data.id` carries it: one job whichever path publishes.
    assert (interaction.name, interaction.event_type) == ("i1", "interaction.budget_exceeded")
    assert gemini.get("interaction", "interactions/i1").name == "i1"
    assert interaction.ended_at == ended
    assert interaction.user_metadata == {"k": "v"}
    assert not gemini.get("interaction", "interactions/i2").terminal
    failed = gemini.get("video", "models/veo-3/operations/op1")
    assert (failed.event_type, failed.error) == ("video.failed", {"code": 13, "message": "x"})
    made = gemini.get("video", "models/veo-3/operations/op2")
    assert (made.event_type, made.file_name) == ("video.generated", "files/f9")
    assert [c.query.get("pageSize") for c in fake.calls_to("GET", r"/v1/batches")] == ["2"] * 3


def test_a_rate_limit_is_one_failed_call_not_a_retry_loop(fake: FakeGemini) -> None:
    FakeJobs(fake).add_interaction("i1", "completed")
    fake.fail(r"/v1/interactions/i1", 429, times=1)
    gemini = sdk(fake)

    with pytest.raises(Exception, match="429") as failure:
        gemini.get("interaction", "i1")

    assert getattr(failure.value, "rate_limited", None) is True
    assert len(fake.calls_to("GET", r"/v1/interactions/i1")) == 1
    assert gemini.get("interaction", "i1").terminal  # the next run's call


GOOD = {"GOOGLE_CLOUD_PROJECT": "p", "GEMINI_API_KEY": "k"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_JOBS_COLLECTION", "a/b"),
        ("RELAY_RECONCILE_GRACE_SECONDS", "-1"),
        ("RELAY_RECONCILE_LOOKBACK_HOURS", "0"),
        ("RELAY_REENABLE_WEBHOOKS", "yes"),
        ("RELAY_ROUTES", "{"),
    ],
)
def test_bad_reconcile_variable_is_named(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_reconcile_settings(GOOD | {variable: value})
    assert error.value.variable == variable


def test_reconcile_defaults_follow_the_contract() -> None:
    settings = load_reconcile_settings(GOOD)
    assert settings.store.collection == "gemini_jobs"
    assert settings.policy.grace == timedelta(seconds=900)
    assert settings.policy.lookback == timedelta(hours=72)
    assert settings.policy.reenable_webhooks is False


def _import_main(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys, main, webhook_relay\n"
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('google.genai')}"
        " or ['no genai']))\n"
        "print('webhook_relay.watching' in sys.modules)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "functions",
        env={"PATH": "/usr/bin:/bin", "GEMINI_JWKS_URL": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_receive_webhook_neither_loads_nor_needs_reconciles_dependencies() -> None:
    done = _import_main(
        {"FUNCTION_TARGET": "receive_webhook", "WEBHOOK_SIGNING_SECRETS": new_secret()}
        | {"GOOGLE_CLOUD_PROJECT": "p"}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-2:] == ["['no genai']", "False"]


def test_reconcile_starts_without_the_receivers_configuration() -> None:
    done = _import_main({"FUNCTION_TARGET": "reconcile"} | GOOD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reconcile ready" in done.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_REENABLE_WEBHOOKS", "yes"),
        ("GEMINI_API_BASE_URL", "http://example.com"),
        ("GEMINI_API_KEY_FILE", "/nonexistent/key"),  # set, and unreadable: a deploy mistake
        ("RELAY_RECONCILE_LOOKBACK_HOURS", "73"),  # longer than the default TTL (72)
    ],
)
def test_reconcile_exits_at_start_with_one_line_naming_its_variable(
    variable: str, value: str
) -> None:
    env = {"FUNCTION_TARGET": "reconcile", "GOOGLE_CLOUD_PROJECT": "p", variable: value}
    done = _import_main(env)
    assert done.returncode != 0
    [line] = [json.loads(text) for text in done.stdout.splitlines() if text.startswith("{")]
    assert line["variable"] == variable
    assert line["severity"] == "CRITICAL"


def test_cli_refuses_a_name_no_job_has_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", "interactions/ok", "files/abc"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("Error: not a job name: 'files/abc'")


def test_cli_reconcile_names_a_bad_variable_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GEMINI_API_KEY", "GEMINI_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")

    assert main(["reconcile"]) == 1

    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "Error: bad configuration: GEMINI_API_KEY: not set (nor GEMINI_API_KEY_FILE)"


# --- reconcile's bounds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"RELAY_DEDUP_TTL_HOURS": "25"}, True),  # the default look-back, 72 h, outlives it
        ({"RELAY_DEDUP_TTL_HOURS": "48", "RELAY_RECONCILE_LOOKBACK_HOURS": "49"}, True),
        ({"RELAY_DEDUP_TTL_HOURS": "48", "RELAY_RECONCILE_LOOKBACK_HOURS": "48"}, False),
        ({}, False),  # 72 and 72
    ],
)
def test_a_lookback_longer_than_the_record_ttl_is_refused(
    env: dict[str, str], refused: bool
) -> None:
    if not refused:
        load_reconcile_settings(GOOD | env)
        return
    with pytest.raises(ConfigError) as error:
        load_reconcile_settings(GOOD | env)
    assert error.value.variable == "RELAY_RECONCILE_LOOKBACK_HOURS"
    assert "RELAY_DEDUP_TTL_HOURS" in str(error.value)


def test_a_claim_of_reconcile_fits_the_lease_floor() -> None:
    # The lease floor is sized for the webhook path; what a run does under its claim (the
    # publish and the record write, the lease counting from the claim's transaction) must fit
    # in it with a margin, or a delivery could take the claim over mid-publish.
    held = reconcile.PUBLISH_SECONDS + reconcile.RECORD_SECONDS
    assert held + reconcile.LEASE_MARGIN_SECONDS <= MIN_CLAIM_LEASE_SECONDS


@pytest.mark.parametrize(
    "key_env",
    [
        {},  # neither set
        {"GEMINI_API_KEY": ""},
        {"GEMINI_API_KEY_FILE": "EMPTY"},  # the secret's volume, holding an empty version
    ],
)
def test_reconcile_starts_without_a_key(key_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("\n")
    env = {name: str(empty) if value == "EMPTY" else value for name, value in key_env.items()}
    done = _import_main({"FUNCTION_TARGET": "reconcile", "GOOGLE_CLOUD_PROJECT": "p"} | env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reconcile ready" in done.stdout


def test_a_run_without_a_key_is_503_with_one_error_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = build({"GOOGLE_CLOUD_PROJECT": "p", "FIRESTORE_EMULATOR_HOST": "127.0.0.1:1"})
    capsys.readouterr()
    with flask.Flask(__name__).test_request_context("/", method="POST"):
        response = handle(flask.request, service)

    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    [line] = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert (line["severity"], line["variable"]) == ("ERROR", "GEMINI_API_KEY")


def test_the_webhook_list_ends_within_its_page_cap_and_budget(fake: FakeGemini) -> None:
    for n in range(10):
        fake.add_webhook(f"https://relay{n}.example.com/")
    client = client_for_reconcile({"GEMINI_API_KEY": "k", "GEMINI_API_BASE_URL": fake.url})

    assert len(SdkGeminiJobs(client, page_size=2).webhooks(Deadline(60))) == 10
    with pytest.raises(ApiFailure, match="did not end within 3 pages"):
        SdkGeminiJobs(client, page_size=2, max_webhook_pages=3).webhooks(Deadline(60))
    # Less left than one call may take: no call at all.
    with pytest.raises(ApiFailure, match="time budget"):
        SdkGeminiJobs(client, page_size=2).webhooks(Deadline(5))

    assert len(fake.calls_to("GET", r"/v1/webhooks")) == 5 + 3
