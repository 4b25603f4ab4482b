"""In-memory stand-ins for Firestore and Pub/Sub, and an in-process app around `http.handle`.

For the pure-logic unit tests only: the real `Verifier` (real settings, a real `KeySet` on the
loopback `JwksServer`) and the real `Relay` run unchanged; only the two stores are fakes. The
fakes keep the protocols' promises (claim/duplicate/in-flight/takeover, release, confirmed
publish) and the fake publisher refuses what Pub/Sub itself would refuse, so a message that
could never be published shows up here instead of in production.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import flask
import werkzeug.routing
from flask.testing import FlaskClient
from google.api_core import exceptions as api_exceptions

from webhook_relay.claim import Claimed, ClaimResult, Companion, Duplicate, InFlight
from webhook_relay.config import Settings, load_settings
from webhook_relay.deadline import Deadline
from webhook_relay.http import handle
from webhook_relay.jwks import KeySet
from webhook_relay.relay import Outcome, Relay
from webhook_relay.verify import Delivery, Head, Verifier

from .signing import Jwk, JwksServer, RsaKey

PROJECT = "test-project"
# Pub/Sub's documented limits (https://cloud.google.com/pubsub/quotas#resource_limits).
PUBSUB_MAX_DATA_BYTES = 10_000_000
PUBSUB_MAX_ATTRIBUTES = 100
PUBSUB_MAX_ATTRIBUTE_KEY_BYTES = 256
PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES = 1024


class FakeClock:
    """A clock that moves only when told to: `KeySet(clock=...)`, `FakeClaims(clock=...)`."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Record:
    state: str  # claimed | published
    lease_until: float
    attempts: int
    event_type: str
    subject: str | None
    topic: str | None = None
    message_id: str | None = None


class FakeClaims:
    """The `Claims` protocol over a dict, with the same state machine as FirestoreClaims."""

    def __init__(self, lease_seconds: int = 30, clock: Callable[[], float] = time.time) -> None:
        self.records: dict[str, Record] = {}
        self.released: list[str] = []
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.fail_claim: BaseException | None = None
        self.fail_mark: BaseException | None = None

    def claim(
        self,
        webhook_id: str,
        event_type: str,
        subject: str | None,
        deadline: Deadline,
        owner: str | None = None,
        companion: Companion | None = None,
    ) -> ClaimResult:
        deadline.timeout(2.5)
        if self.fail_claim is not None:
            raise self.fail_claim
        now = self.clock()
        record = self.records.get(webhook_id)
        if record is not None and record.state == "published":
            return Duplicate(webhook_id)
        if record is not None and record.lease_until > now:
            return InFlight(webhook_id, max(1, math.ceil(record.lease_until - now)))
        attempts = 1 if record is None else record.attempts + 1
        self.records[webhook_id] = Record(
            "claimed", now + self.lease_seconds, attempts, event_type, subject
        )
        return Claimed(webhook_id, attempts, token=attempts, owner=owner or "")

    def mark_published(
        self,
        claim: Claimed,
        topic: str | None,
        message_id: str | None,
        deadline: Deadline,
        companion: Companion | None = None,
    ) -> None:
        if self.fail_mark is not None:
            raise self.fail_mark
        record = self.records[claim.webhook_id]
        if record.attempts != claim.token:  # taken over since: not ours to mark
            raise api_exceptions.FailedPrecondition("claim taken over")  # type: ignore[no-untyped-call]
        record.state, record.topic, record.message_id = "published", topic, message_id

    def release(self, claim: Claimed, deadline: Deadline) -> None:
        record = self.records.get(claim.webhook_id)
        if record is not None and record.attempts == claim.token:  # still ours
            record.lease_until = self.clock()
            self.released.append(claim.webhook_id)

    def live_claims(self) -> list[str]:
        now = self.clock()
        return [
            webhook_id
            for webhook_id, record in self.records.items()
            if record.state == "claimed" and record.lease_until > now
        ]


class PubSubRejected(ValueError):
    """What Pub/Sub would refuse: the real publisher would turn it into a 503, forever."""


@dataclass(frozen=True)
class Message:
    topic: str
    data: bytes
    attributes: dict[str, str]
    message_id: str

    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.data)
        return event


@dataclass
class FakePublisher:
    """The `Publisher` protocol: records what it "stored"; `fail_with` makes it fail."""

    messages: list[Message] = field(default_factory=list)
    fail_with: BaseException | None = None

    def publish(
        self, topic: str, data: bytes, attributes: Mapping[str, str], deadline: Deadline
    ) -> str:
        deadline.timeout(5.0)
        if self.fail_with is not None:
            raise self.fail_with
        check_publishable(data, attributes)
        message = Message(topic, data, dict(attributes), str(len(self.messages) + 1))
        self.messages.append(message)
        return message.message_id

    def on(self, topic: str) -> list[Message]:
        return [message for message in self.messages if message.topic == topic]


def check_publishable(data: bytes, attributes: Mapping[str, str]) -> None:
    """Pub/Sub's limits, plus the contract's promise that data is strict UTF-8 JSON."""
    if not isinstance(data, bytes) or len(data) > PUBSUB_MAX_DATA_BYTES:
        raise PubSubRejected("data is not bytes of at most 10 MB")
    try:
        json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PubSubRejected(f"data is not strict UTF-8 JSON ({exc})") from None
    if len(attributes) > PUBSUB_MAX_ATTRIBUTES:
        raise PubSubRejected("too many attributes")
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise PubSubRejected(f"attribute {key!r} is not a string")
        try:
            key_bytes, value_bytes = key.encode(), value.encode()
        except UnicodeEncodeError:
            raise PubSubRejected(f"attribute {key!r} is not UTF-8 encodable") from None
        if not key_bytes or len(key_bytes) > PUBSUB_MAX_ATTRIBUTE_KEY_BYTES:
            raise PubSubRejected(f"attribute key {key!r} is empty or too long")
        if len(value_bytes) > PUBSUB_MAX_ATTRIBUTE_VALUE_BYTES:
            raise PubSubRejected(f"attribute {key!r} is longer than 1024 bytes")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class InProcessPipeline:
    """The `http.Pipeline` protocol: the real Verifier and Relay around the fakes."""

    def __init__(
        self,
        settings: Settings,
        key_set: KeySet | None,
        claims: FakeClaims,
        publisher: FakePublisher,
        project: str | None = PROJECT,
    ) -> None:
        self.max_body_bytes = settings.max_body_bytes
        self.project = project
        self.verifier = Verifier(settings, key_set)
        self.relay = Relay(claims, publisher, settings.routes)

    def check_head(self, head: Head) -> str | None:
        return self.verifier.check_head(head)

    def verify(self, delivery: Delivery) -> str:
        return self.verifier.verify(delivery)

    def deliver(
        self, delivery: Delivery, scheme: str, deadline: Deadline, traceparent: str | None = None
    ) -> Outcome:
        return self.relay.deliver(delivery, scheme, deadline, traceparent)


def build_app(pipeline: InProcessPipeline) -> flask.Flask:
    """`/` routed for every method, even made-up ones, into `handle`: functions-framework
    mounts an HTTP function the same way (a werkzeug Rule without `methods`)."""
    app = flask.Flask("webhook_relay_under_test")
    app.testing = True  # an exception escaping handle() fails the test instead of a 500
    app.url_map.add(werkzeug.routing.Rule("/", endpoint="receive"))
    app.view_functions["receive"] = lambda: handle(flask.request, pipeline)
    return app


@functools.cache
def rsa_key(name: str) -> RsaKey:
    """RSA keys are slow to make: one per name for the whole run."""
    return RsaKey(kid=f"kid-{name}")


@functools.cache
def _shared_jwks_server() -> JwksServer:
    server = JwksServer()
    running = ExitStack()
    running.enter_context(server.running())  # a daemon thread serving for the rest of the run
    # Stopped while the interpreter still runs threads: left to garbage collection at exit,
    # its shutdown() would wait forever on a serving thread that is already frozen.
    atexit.register(running.close)
    return server


def jwks_server(*keys: Jwk) -> JwksServer:
    """The run's loopback key set server, reset to serve exactly `keys`, up, uncounted."""
    server = _shared_jwks_server()
    server.keys = list(keys)
    server.down = False
    server.requests = 0
    return server


@dataclass
class Harness:
    settings: Settings
    key_set: KeySet | None
    key_set_clock: FakeClock
    claims: FakeClaims
    publisher: FakePublisher
    pipeline: InProcessPipeline
    app: flask.Flask

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()


def harness(env: Mapping[str, str], project: str | None = PROJECT) -> Harness:
    """Settings from `env` exactly as at start-up, and everything wired around them."""
    settings = load_settings(env)
    clock = FakeClock()
    key_set = KeySet(settings.jwks_url, clock=clock) if settings.jwks_url else None
    claims = FakeClaims(settings.claim_lease_seconds)
    publisher = FakePublisher()
    pipeline = InProcessPipeline(settings, key_set, claims, publisher, project)
    return Harness(settings, key_set, clock, claims, publisher, pipeline, build_app(pipeline))
