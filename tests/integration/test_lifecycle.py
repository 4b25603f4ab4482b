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
from tests.support.fake_gemini import FakeWebhook
from tests.support.lifecycle import PROJECT, SECRET_NAME, World, lifecycle_world
from tests.support.signing import headers_v1, new_secret

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
    assert stored[0] == new
    assert f"{issued};expires=" in "\n".join(stored)
    eventually_accepted(relay, new)
    assert time.time() < old_expiry.timestamp() - 1, "too slow to see both secrets accepted"
    assert deliver(relay, issued) == 200

    time.sleep(max(0.0, old_expiry.timestamp() - time.time()) + 1.2)
    assert deliver(relay, issued) == 401
    assert deliver(relay, new) == 200
    expired = [line for line in relay.log_lines() if line.get("status") == "signing_secret_expired"]
    # Gemini's first secret and the placeholder, both rotated out: one line each.
    assert len(expired) == 2

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
    assert ": 3 jobs: 1 published, 2 watching" in shown.stdout

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
    (line,) = [x for x in broken.stderr.splitlines() if x.strip()]
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
