"""register → deliveries → rotate → expiry → status, end to end.

The relay runs as in production on the emulators and reads its secrets from a file that the
fake Secret Manager keeps holding the secret's latest version, as a Cloud Run secret volume
does. The CLI runs as a subprocess with nothing but the standard environment pointing it at
the fakes. Deliveries are signed by `standardwebhooks`, not by our code.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.conftest import StartRelay
from tests.integration.harness import RelayServer, Stack
from tests.support.fake_gemini import FakeWebhook, Request
from tests.support.lifecycle import PROJECT, SECRET_NAME, World, key, lifecycle_world
from tests.support.signing import headers_v1, new_secret
from webhook_relay.cli.relay_records import PingWatch, RelayRecords

# How long Gemini keeps a rotated-out secret here: long enough to see it accepted after the
# rotation on a slow machine, short enough to see it refused after.
GRACE = timedelta(seconds=12)


@pytest.fixture
def world(tmp_path: Path, stack: Stack) -> Iterator[World]:
    token = secrets.token_hex(4)
    extra = stack.env() | {
        "RELAY_DEDUP_COLLECTION": f"deliveries_{token}",
        "RELAY_JOBS_COLLECTION": f"jobs_{token}",
    }
    with lifecycle_world(tmp_path, extra) as world:
        world.gemini.rotation_grace = GRACE
        yield world


def serve(world: World, start_relay: StartRelay, tmp_path: Path) -> RelayServer:
    """The relay, reading the secret's latest version from its "volume"."""
    placeholder = new_secret()  # what the README's first step puts there
    world.google.add_secret(SECRET_NAME, (placeholder + "\n").encode())
    volume = tmp_path / "volume" / "webhook-signing-secrets"
    volume.parent.mkdir()
    world.google.mount(SECRET_NAME, volume)
    return start_relay(
        WEBHOOK_SIGNING_SECRETS="",
        WEBHOOK_SIGNING_SECRETS_FILE=str(volume),
        RELAY_DEDUP_COLLECTION=world.env["RELAY_DEDUP_COLLECTION"],
    )


def deliver(relay: RelayServer, secret: str) -> int:
    body = json.dumps(
        {
            "type": "batch.succeeded",
            "version": "v1",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {"id": "batches/" + secrets.token_hex(4)},
        }
    ).encode()
    return relay.post(body, headers_v1(secret, body)).status


def eventually_accepted(relay: RelayServer, secret: str) -> None:
    """The relay re-reads its secrets file within seconds of a new version (contract: 10 s)."""
    deadline = time.monotonic() + 10
    while deliver(relay, secret) != 200:
        assert time.monotonic() < deadline, "the new secret was not accepted within 10 s"
        time.sleep(0.2)


def only_webhook(world: World) -> FakeWebhook:
    (hook,) = world.gemini.webhooks.values()
    return hook


def test_register_rotate_expire_status(
    world: World, start_relay: StartRelay, stack: Stack, tmp_path: Path
) -> None:
    relay = serve(world, start_relay, tmp_path)
    url = relay.url
    args = ("--project", PROJECT, "--url", url)

    first = world.cli("register", *args)
    assert first.returncode == 0, first.stderr
    hook = only_webhook(world)
    issued = hook.secrets[0].value
    assert f"Created webhook {hook.id} for {url}" in first.stdout
    assert "the relay verified the ping" in first.stdout
    assert any(d.status == 200 for d in world.gemini.deliveries)
    (created,) = world.gemini.calls_to("POST", r"/v1/webhooks")
    assert created.body["uri"] == url
    assert len(created.body["subscribed_events"]) == 7
    assert len(world.stored()) == 2  # Gemini's secret plus the placeholder kept
    assert world.stored()[0] == f"{issued};webhook={hook.id}"
    assert deliver(relay, issued) == 200

    again = world.cli("register", *args)
    assert again.returncode == 0, again.stderr
    assert f"Webhook {hook.id} is already registered" in again.stdout
    assert len(world.gemini.webhooks) == 1
    assert world.versions() == 2  # nothing written

    rotated = world.cli("rotate", *args)
    assert rotated.returncode == 0, rotated.stderr
    new = hook.secrets[-1].value
    old_expiry = hook.secrets[0].expire_time
    assert new != issued
    assert old_expiry is not None
    assert world.versions() == 3  # one version per rotation
    stored = world.stored()
    assert stored[0] == f"{new};webhook={hook.id}"
    assert f"{issued};webhook={hook.id};expires=" in "\n".join(stored)
    # The README's placeholder names no webhook and is not Gemini's: left alone, and said so.
    assert "Left 1 untagged secret as it is" in rotated.stdout
    eventually_accepted(relay, new)
    assert time.time() < old_expiry.timestamp() - 1, "too slow to see both secrets accepted"
    assert deliver(relay, issued) == 200

    time.sleep(max(0.0, old_expiry.timestamp() - time.time()) + 1.2)
    assert deliver(relay, issued) == 401
    assert deliver(relay, new) == 200
    expired = [line for line in relay.log_lines() if line.get("status") == "signing_secret_expired"]
    assert len(expired) == 1  # Gemini's first secret, rotated out

    jobs = stack.db.collection(world.env["RELAY_JOBS_COLLECTION"])
    for state in ("watching", "watching", "published"):
        jobs.document().set({"state": state})
    shown = world.cli("status", *args)
    assert shown.returncode == 0, shown.stderr
    assert f"Webhook {hook.id} for {url} (Gemini API v1): enabled" in shown.stdout
    assert "batch.succeeded" in shown.stdout
    assert "signing secrets at Gemini: 1" in shown.stdout  # the old one has expired there too
    assert "version 3: 3 secrets" in shown.stdout
    assert "expired" in shown.stdout
    assert "no expiry" in shown.stdout
    assert ": 3 jobs: 2 watching, 0 claimed, 1 published" in shown.stdout

    world.assert_no_secret(relay.log.read_text())


def test_rotate_survives_secret_manager_down_after_gemini_rotated(
    world: World, start_relay: StartRelay, tmp_path: Path
) -> None:
    relay = serve(world, start_relay, tmp_path)
    args = ("--project", PROJECT, "--url", relay.url)
    assert world.cli("register", *args).returncode == 0
    hook = only_webhook(world)
    first = hook.secrets[0].value
    world.google.fail(r":addVersion$", 503, times=-1)

    broken = world.cli("rotate", *args)
    assert broken.returncode == 1
    assert "Traceback" not in broken.stderr
    *retries, line = [x for x in broken.stderr.splitlines() if x.strip()]
    assert retries
    assert all("HTTP 503 UNAVAILABLE" in x and "retrying in" in x for x in retries)
    assert line.startswith(f"Error: Gemini rotated the signing secret of webhook {hook.id}")
    assert "UNAVAILABLE" in line
    assert f"run `webhook-relay rotate --project {PROJECT} --url {relay.url}` again" in line
    assert world.versions() == 2
    assert deliver(relay, first) == 200  # still valid at Gemini and in the relay

    world.google._failures.clear()
    fixed = world.cli("rotate", *args)
    assert fixed.returncode == 0, fixed.stderr
    newest = hook.secrets[-1].value
    eventually_accepted(relay, newest)
    assert deliver(relay, first) == 200
    world.assert_no_secret(relay.log.read_text())


def test_register_reports_a_relay_that_cannot_verify_the_ping(
    world: World, start_relay: StartRelay, tmp_path: Path
) -> None:
    # The relay reads another secret: Gemini's ping is refused, and register says so.
    relay = start_relay(RELAY_DEDUP_COLLECTION=world.env["RELAY_DEDUP_COLLECTION"])
    result = world.cli("register", "--project", PROJECT, "--url", relay.url, "--wait", "6")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Created the secret" in result.stdout  # there was none: register made it
    assert last.startswith("Error: pinged webhook")
    assert "recorded no verified ping within 6 s" in last
    assert len(world.gemini.calls_to("POST", r"/v1/webhooks/[^/]+:ping")) >= 2  # pinged again
    # A line at least every 2 s while it waits, on stderr: stdout stays parseable.
    waiting = [x for x in result.stderr.splitlines() if "waiting for the relay to record" in x]
    assert len(waiting) >= 2
    assert "waiting" not in result.stdout
    assert {d.status for d in world.gemini.deliveries} == {401}
    world.assert_no_secret(relay.log.read_text())


def test_register_enables_a_disabled_webhook_instead_of_duplicating_it(
    world: World, start_relay: StartRelay, tmp_path: Path
) -> None:
    relay = serve(world, start_relay, tmp_path)
    hook = world.gemini.add_webhook(
        relay.url, ["batch.succeeded"], state="disabled_due_to_failed_deliveries"
    )
    world.google.add_version(SECRET_NAME, (hook.secrets[0].value + "\n").encode())
    eventually_accepted(relay, hook.secrets[0].value)

    events = "batch.succeeded,batch.failed"
    result = world.cli("register", "--project", PROJECT, "--url", relay.url, "--events", events)
    assert result.returncode == 0, result.stderr
    assert f"Webhook {hook.id} is already registered" in result.stdout
    assert "Enabled webhook" in result.stdout
    assert "the relay verified the ping" in result.stdout
    assert len(world.gemini.webhooks) == 1
    assert hook.state == "enabled"
    assert hook.subscribed_events == ["batch.succeeded", "batch.failed"]
    assert [c.query.get("update_mask") for c in world.gemini.calls_to("PATCH", r".*")] == [
        "state",
        "subscribed_events",
    ]
    assert world.versions() == 2  # no new secret: nothing written
    world.assert_no_secret(relay.log.read_text())


def test_register_does_not_take_a_quarantined_delivery_for_the_ping(
    world: World, start_relay: StartRelay, secret: str
) -> None:
    # The relay cannot verify Gemini's ping (it holds another secret), but while register
    # waits, a verified delivery that is no ping is recorded (quarantined: not JSON).
    relay = start_relay(RELAY_DEDUP_COLLECTION=world.env["RELAY_DEDUP_COLLECTION"])
    quarantined: list[int] = []

    def ping_and_another_delivery(request: Request) -> tuple[int, object]:
        body = b"not json"
        quarantined.append(relay.post(body, headers_v1(secret, body)).status)
        return world.gemini._ping(request)

    world.gemini.route("POST", r"/v1/webhooks/(?P<id>[^/:]+):ping", ping_and_another_delivery)
    result = world.cli("register", "--project", PROJECT, "--url", relay.url, "--wait", "4")
    assert quarantined
    assert set(quarantined) == {200}
    assert {d.status for d in world.gemini.deliveries} == {401}
    assert result.returncode == 1
    assert "recorded no verified ping within 4 s" in result.stderr.strip().splitlines()[-1]


def test_ping_watch_reads_a_bounded_page_and_finds_only_a_recorded_ping(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in stack.env().items():
        monkeypatch.setenv(name, value)
    collection = stack.db.collection("pings_" + secrets.token_hex(4))
    start = datetime.now(UTC)

    def record(event_type: str, state: str, offset: float) -> None:
        seen = start + timedelta(seconds=offset)
        collection.document().set({"event_type": event_type, "state": state, "first_seen_at": seen})

    record("webhook.ping", "published", -60)  # before the window
    for n in range(7):
        record("relay.quarantined" if n % 2 else "batch.succeeded", "published", n)
    record("webhook.ping", "claimed", 10)
    watch = PingWatch(RelayRecords(PROJECT), collection.id, start, page=3)
    # Each poll reads one page after the last: the quarantined and other deliveries are read
    # once and never taken for the ping; the ping before the window is never read.
    assert (watch.poll(), watch.read) == (None, 3)
    assert (watch.poll(), watch.read) == (None, 6)
    found = watch.poll()
    assert found is not None
    assert (found.event_type, watch.read) == ("webhook.ping", 8)


def test_two_urls_then_rotate_one_then_status_of_both(
    world: World, start_relay: StartRelay, tmp_path: Path
) -> None:
    """One relay behind two URLs (a custom domain and its run.app URL): register both, rotate
    one; the other webhook's secret keeps no expiry and its deliveries keep verifying."""
    world.gemini.rotation_grace = timedelta(hours=24)  # Gemini's own: nothing here waits for it
    relay = serve(world, start_relay, tmp_path)
    first, second = relay.url, relay.url.replace("127.0.0.1", "localhost")
    transcript: list[str] = []

    def cli(*args: str) -> str:
        result = world.cli(*args)
        transcript.append(f"$ webhook-relay {' '.join(args)}\n{result.stdout}{result.stderr}")
        assert result.returncode == 0, result.stderr
        return result.stdout

    cli("register", "--project", PROJECT, "--url", first)
    cli("register", "--project", PROJECT, "--url", second)
    hook_a, hook_b = world.gemini.webhooks.values()
    secret_b = hook_b.secrets[0].value
    rotated = cli("rotate", "--project", PROJECT, "--url", first)
    assert f"Left 1 secret of other webhooks as it is (webhook {hook_b.id})." in rotated
    stored = world.stored_entries()
    assert stored[key(secret_b)].expires_at is None
    assert stored[key(hook_a.secrets[0].value)].expires_at is not None
    eventually_accepted(relay, hook_a.secrets[-1].value)
    assert deliver(relay, secret_b) == 200
    for url, hook in ((first, hook_a), (second, hook_b)):
        shown = cli("status", "--project", PROJECT, "--url", url)
        assert f"Webhook {hook.id} for {url}" in shown
        assert f"webhook {hook_b.id}  no expiry" in shown
        assert f"webhook {hook_a.id}  expires " in shown
    print("\n".join(transcript))  # the closing note's transcript (pytest -s)
    world.assert_no_secret(relay.log.read_text(), *transcript)
