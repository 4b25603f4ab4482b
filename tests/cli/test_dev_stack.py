"""`webhook-relay dev`, `send`, `tail` and `redrive` together, on the emulators.

One `dev` (the session's `dev_stack`) serves every test here; each test starts from empty
dev subscriptions. The last test stops `dev` with SIGINT and checks that nothing it started
is left running.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

from tests.cli.conftest import (
    DevStack,
    assert_one_error_line,
    group_members,
    process_alive,
    run,
)
from webhook_relay.cli.send import KEYSET_KEY_FILE
from webhook_relay.emulators import free_port
from webhook_relay.normalize import normalize
from webhook_relay.signing import new_secret

pytestmark = [
    pytest.mark.emulators,
    pytest.mark.filterwarnings("ignore:The return_immediately flag:DeprecationWarning"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "subscriber.py"
SUBSCRIPTIONS = (
    "gemini-batch-dev",
    "gemini-interaction-dev",
    "gemini-unrouted-dev",
    "gemini-video-dev",
)


class Bus:
    """The dev Pub/Sub emulator, from the test's side."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.publisher = PublisherClient()
        self.subscriber = SubscriberClient()

    def path(self, kind: str, name: str) -> str:
        return f"projects/{self.project}/{kind}/{name}"

    def drain(self, subscription: str) -> list[Any]:
        """Every message waiting now (acknowledged), as PubsubMessage objects."""
        messages: list[Any] = []
        path = self.path("subscriptions", subscription)
        while True:
            response = self.subscriber.pull(
                request={"subscription": path, "max_messages": 100, "return_immediately": True},
                timeout=10,
            )
            if not response.received_messages:
                return messages
            messages += [item.message for item in response.received_messages]
            ack_ids = [item.ack_id for item in response.received_messages]
            self.subscriber.acknowledge(request={"subscription": path, "ack_ids": ack_ids})

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        future = self.publisher.publish(self.path("topics", topic), data, **attributes)
        return str(future.result(timeout=10))

    def create(self, topic: str, subscription: str) -> None:
        with contextlib.suppress(exceptions.AlreadyExists):
            self.publisher.create_topic(name=self.path("topics", topic))
        with contextlib.suppress(exceptions.AlreadyExists):
            self.subscriber.create_subscription(
                name=self.path("subscriptions", subscription), topic=self.path("topics", topic)
            )

    def close(self) -> None:
        self.publisher.stop()
        self.subscriber.close()


@pytest.fixture
def bus(dev_stack: DevStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bus]:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", dev_stack.pubsub_host)
    bus = Bus(dev_stack.project)
    for subscription in SUBSCRIPTIONS:
        bus.drain(subscription)
    yield bus
    bus.close()


def new_id() -> str:
    return "msg_test_" + secrets.token_hex(6)


def relay_event(event_type: str, job: str, webhook_id: str | None = None) -> Any:
    body = json.dumps(
        {
            "type": event_type,
            "version": "v1",
            "timestamp": "2026-05-04T10:00:00Z",
            "data": {"id": job, "output_file_uri": f"gs://bucket/{job}"},
        }
    ).encode()
    return normalize(webhook_id or new_id(), int(time.time()), body, "hmac")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_dev_serves_and_describes_itself(dev_stack: DevStack) -> None:
    with urllib.request.urlopen(dev_stack.url, timeout=5) as answer:
        assert answer.status == 200
        assert json.loads(answer.read()) == {"status": "ok"}
    state = dev_stack.state
    assert state["secret"].startswith("whsec_")
    assert state["pids"]["dev"] == dev_stack.process.pid
    assert set(state["pids"]) == {"dev", "function", "firestore", "pubsub"}
    assert state["subscriptions"] == {name: name.removesuffix("-dev") for name in SUBSCRIPTIONS}
    with urllib.request.urlopen(state["jwks_url"], timeout=5) as answer:
        [key, okp] = json.loads(answer.read())["keys"]
    assert (key["kid"], key["kty"]) == (state["kid"], "RSA")
    assert (okp["kty"], okp["crv"]) == ("OKP", "Ed25519")
    assert "d" not in key  # the public half only
    assert "d" not in okp
    key_file = Path(state["private_key"])
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (dev_stack.state_dir / KEYSET_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert (dev_stack.state_dir / "state.json").stat().st_mode & 0o777 == 0o600
    output = dev_stack.output()
    assert dev_stack.url in output
    assert state["secret"] in output
    assert f"send batch.succeeded --url {dev_stack.url} --secret {state['secret']}" in output


def test_send_hmac_is_accepted_and_tail_prints_it(dev_stack: DevStack, bus: Bus) -> None:
    webhook_id = new_id()
    sent = dev_stack.cli("send", "batch.succeeded", "--id", webhook_id)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "200 accepted" in sent.stdout

    tailed = dev_stack.cli("tail", "--json", "--count", "1", "--timeout", "15")
    assert tailed.returncode == 0, tailed.stderr
    [event] = json_lines(tailed.stdout)
    assert event["id"] == webhook_id
    assert event["type"] == "batch.succeeded"
    assert event["signature"] == "hmac"
    assert event["data"]["output_uri"].startswith("gs://my-bucket/batches/")
    assert event["subject"] in sent.stdout
    assert bus.drain("gemini-batch-dev") == []  # tail acknowledged it


def test_send_jwt_is_accepted(dev_stack: DevStack, bus: Bus) -> None:
    webhook_id = new_id()
    sent = dev_stack.cli("send", "video.generated", "--scheme", "jwt", "--id", webhook_id)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "200 accepted" in sent.stdout
    [message] = bus.drain("gemini-video-dev")
    assert message.attributes["webhook_id"] == webhook_id
    assert message.attributes["signature"] == "jwt"


def test_send_keyset_v1a_is_accepted_as_a_dynamic_delivery(dev_stack: DevStack, bus: Bus) -> None:
    webhook_id = new_id()
    sent = dev_stack.cli("send", "batch.failed", "--scheme", "keyset", "--id", webhook_id)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "200 accepted" in sent.stdout
    [message] = bus.drain("gemini-batch-dev")
    assert message.attributes["webhook_id"] == webhook_id
    assert message.attributes["signature"] == "keyset-ed25519"


def test_a_wrong_secret_is_refused(dev_stack: DevStack, bus: Bus) -> None:
    sent = dev_stack.cli("send", "--secret", new_secret(), "--retries", "1", "--backoff", "0")
    assert "attempt 2: 401 unauthorized: no signature matches" in sent.stdout
    assert_one_error_line(sent, "final answer 401 unauthorized")
    assert bus.drain("gemini-batch-dev") == []


def test_duplicates_publish_one_event(dev_stack: DevStack, bus: Bus) -> None:
    webhook_id = new_id()
    sent = dev_stack.cli("send", "batch.failed", "--duplicates", "2", "--id", webhook_id)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.count("200 accepted") == 1
    assert sent.stdout.count("200 duplicate") == 2

    tailed = dev_stack.cli("tail", "--json", "--timeout", "2")
    assert tailed.returncode == 0, tailed.stderr
    [event] = json_lines(tailed.stdout)  # exactly one message, on any dev subscription
    assert event["id"] == webhook_id
    assert event["data"]["error"] == {"code": "INTERNAL", "message": "sample failure"}


def test_tail_prints_one_line_per_event(dev_stack: DevStack, bus: Bus) -> None:
    for event_type, job in (("video.generated", "video_tail"), ("batch.failed", "batch_tail")):
        sent = dev_stack.cli("send", event_type, "--data", json.dumps({"id": job}))
        assert sent.returncode == 0, sent.stdout + sent.stderr

    tailed = dev_stack.cli("tail", "--count", "2", "--timeout", "15")
    assert tailed.returncode == 0, tailed.stderr
    lines = sorted(tailed.stdout.splitlines(), key=lambda line: line.split()[1])
    assert len(lines) == 2
    failed, video = lines[0].split(), lines[1].split()
    assert failed[1:4] == ["batch.failed", "batch_tail", "error"]
    assert failed[-1] == "[gemini-batch]"
    assert "INTERNAL: sample failure" in lines[0]
    assert video[1:] == [
        "video.generated",
        "video_tail",
        "gs://my-bucket/videos/video_tail.mp4",
        "[gemini-video]",
    ]
    assert "\x1b[" not in tailed.stdout  # no colour when piped

    empty = dev_stack.cli("tail", "--count", "1", "--timeout", "1")
    assert_one_error_line(empty, "0 of 1 events", alone=False)


def test_quarantined_body_is_published_to_unrouted(dev_stack: DevStack, bus: Bus) -> None:
    (dev_stack.home / "garbage.bin").write_bytes(b"\xffnot json")
    sent = dev_stack.cli("send", "--file", "garbage.bin")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "200 quarantined" in sent.stdout

    tailed = dev_stack.cli(
        "tail", "--subscription", "gemini-unrouted-dev", "--count", "1", "--timeout", "15"
    )
    assert tailed.returncode == 0, tailed.stderr
    assert "relay.quarantined" in tailed.stdout
    assert "quarantined: body is not JSON" in tailed.stdout


def test_redrive_moves_each_message_once(dev_stack: DevStack, bus: Bus) -> None:
    routable = relay_event("batch.succeeded", "batch_redrive")
    unknown = relay_event("model.tuned", "model_redrive")
    for event in (routable, unknown):
        bus.publish("gemini-unrouted", event.data(), event.attributes())

    moved = dev_stack.cli("redrive", "--subscription", "gemini-unrouted-dev", "--wait", "1")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert moved.stdout.splitlines()[-1] == "moved 1, left 1, failed 0"
    assert "model.tuned: routes back to gemini-unrouted" in moved.stdout

    # Again: what was left is left again, nothing moves twice, and the run ends.
    again = dev_stack.cli("redrive", "--subscription", "gemini-unrouted-dev", "--wait", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1] == "moved 0, left 1, failed 0"

    [arrived] = bus.drain("gemini-batch-dev")
    assert arrived.data == routable.data()
    assert dict(arrived.attributes) == routable.attributes()
    [stayed] = bus.drain("gemini-unrouted-dev")
    assert stayed.attributes["webhook_id"] == unknown.cloudevent["id"]


def test_redrive_a_dead_letter_subscription(dev_stack: DevStack, bus: Bus) -> None:
    bus.create("gemini-dead-letter", "gemini-dead-letter-sub")
    bus.drain("gemini-dead-letter-sub")
    batch = relay_event("batch.succeeded", "batch_dead")
    video = relay_event("video.generated", "video_dead")
    quarantined = normalize(new_id(), int(time.time()), b"not json", "hmac")
    dead_letter = {"CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    bus.publish("gemini-dead-letter", batch.data(), batch.attributes() | dead_letter)
    bus.publish("gemini-dead-letter", video.data(), {})  # routed by its CloudEvent type
    bus.publish("gemini-dead-letter", quarantined.data(), quarantined.attributes())
    bus.publish("gemini-dead-letter", b"not ours", {"origin": "elsewhere"})

    result = dev_stack.cli("redrive", "--subscription", "gemini-dead-letter-sub", "--wait", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "moved 3, left 1, failed 0"
    assert "not a relay event" in result.stdout

    [moved_batch] = bus.drain("gemini-batch-dev")
    assert dict(moved_batch.attributes) == batch.attributes() | dead_letter
    [moved_video] = bus.drain("gemini-video-dev")
    assert moved_video.data == video.data()
    [moved_quarantined] = bus.drain("gemini-unrouted-dev")
    assert moved_quarantined.data == quarantined.data()
    [left] = bus.drain("gemini-dead-letter-sub")
    assert left.data == b"not ours"


def test_redrive_follows_the_given_routes_and_dry_run_moves_nothing(
    dev_stack: DevStack, bus: Bus
) -> None:
    event = relay_event("model.tuned", "model_routes")
    bus.publish("gemini-unrouted", event.data(), event.attributes())
    routes = json.dumps({"model.*": "gemini-interaction"})

    dry = dev_stack.cli(
        "redrive", "--subscription", "gemini-unrouted-dev", "--routes", routes, "--dry-run",
        "--wait", "1",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would move" in dry.stdout
    assert "model.tuned → gemini-interaction" in dry.stdout
    assert dry.stdout.splitlines()[-1] == "would move 1, left 0, failed 0"
    assert bus.drain("gemini-interaction-dev") == []

    moved = dev_stack.cli(
        "redrive", "--subscription", "gemini-unrouted-dev", "--routes", routes, "--wait", "1"
    )
    assert moved.stdout.splitlines()[-1] == "moved 1, left 0, failed 0"
    [arrived] = bus.drain("gemini-interaction-dev")
    assert arrived.data == event.data()
    assert bus.drain("gemini-unrouted-dev") == []


def test_redrive_reports_failed_publishes_and_keeps_the_message(
    dev_stack: DevStack, bus: Bus
) -> None:
    event = relay_event("batch.succeeded", "batch_nowhere")
    bus.publish("gemini-unrouted", event.data(), event.attributes())
    routes = json.dumps({"batch.*": "gemini-no-such-topic"})
    result = dev_stack.cli(
        "redrive", "--subscription", "gemini-unrouted-dev", "--routes", routes, "--wait", "1"
    )
    assert result.stdout.splitlines()[-1] == "moved 0, left 0, failed 1"
    assert "NotFound" in result.stdout
    assert_one_error_line(result, "could not be re-published", alone=False)
    [kept] = bus.drain("gemini-unrouted-dev")
    assert kept.data == event.data()


def test_redrive_refusals_are_one_line(dev_stack: DevStack) -> None:
    result = dev_stack.cli("redrive", "--subscription", "no-such-sub")
    assert_one_error_line(result, "subscription no-such-sub does not exist")
    result = dev_stack.cli("redrive", "--subscription", "gemini-unrouted-dev", "--routes", "[]")
    assert_one_error_line(result, "--routes")
    result = dev_stack.cli("tail", "--subscription", "no-such-sub", "--timeout", "1")
    assert_one_error_line(result, "subscription no-such-sub does not exist")


def test_example_subscriber_prints_where_the_output_is(dev_stack: DevStack, bus: Bus) -> None:
    for event_type, job in (("batch.succeeded", "batch_example"), ("video.generated", "vid_ex")):
        sent = dev_stack.cli("send", event_type, "--data", json.dumps({"id": job}))
        assert sent.returncode == 0, sent.stdout + sent.stderr
    example = subprocess.run(
        [sys.executable, str(EXAMPLE), "--timeout", "4"],
        env=dev_stack.env(
            {"PUBSUB_EMULATOR_HOST": dev_stack.pubsub_host, "GOOGLE_CLOUD_PROJECT": "demo-project"}
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert example.returncode == 0, example.stderr
    assert sorted(example.stdout.splitlines()) == [
        "batch batch_example succeeded: gs://my-bucket/batches/batch_example/results.jsonl",
        "video vid_ex generated: gs://my-bucket/videos/vid_ex.mp4 (files/vid_ex)",
    ]
    assert bus.drain("gemini-batch-dev") == []  # acknowledged
    assert bus.drain("gemini-video-dev") == []


def test_second_dev_is_refused(dev_stack: DevStack, tmp_path: Path) -> None:
    same_state = run(
        "dev", "--port", str(free_port()), "--state-dir", str(dev_stack.state_dir),
        cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert_one_error_line(same_state, "another `webhook-relay dev`", str(dev_stack.process.pid))
    same_port = run(
        "dev", "--port", str(dev_stack.port), "--state-dir", str(tmp_path / "state"),
        cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert_one_error_line(same_port, f"port {dev_stack.port} is already in use")
    assert (dev_stack.state_dir / "state.json").is_file()  # the running dev is untouched


def test_sigint_stops_everything(dev_stack: DevStack) -> None:
    """Runs last (see conftest): it stops the shared `dev`."""
    pids: dict[str, int] = dev_stack.state["pids"]
    groups = [pids["function"], pids["firestore"], pids["pubsub"]]
    for pgid in groups:
        assert group_members(pgid), f"process group {pgid} should be running"
    hosts = [dev_stack.state["firestore_host"], dev_stack.state["pubsub_host"]]

    started = time.monotonic()
    assert dev_stack.stop(signal.SIGINT) == 0, dev_stack.output()
    assert time.monotonic() - started < 30

    for name, pid in pids.items():
        assert not process_alive(pid), f"{name} (pid {pid}) is still running"
    for pgid in groups:
        assert group_members(pgid) == [], f"process group {pgid} is still running"
    for host in [*hosts, f"127.0.0.1:{dev_stack.port}"]:
        with pytest.raises(urllib.error.URLError, match="refused"):
            urllib.request.urlopen(f"http://{host}/", timeout=2)
    assert not (dev_stack.state_dir / "state.json").exists()
    assert not (dev_stack.state_dir / "jwt-private-key.pem").exists()
    assert not (dev_stack.state_dir / KEYSET_KEY_FILE).exists()
    output = dev_stack.output()
    assert "SIGINT: stopping" in output
    assert "Traceback" not in output
