"""Wiring: settings at start-up, clients on first use, one pipeline per instance."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import flask
import google.auth
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import firestore
from google.cloud.pubsub_v1 import PublisherClient

from . import logs
from .claim import FirestoreClaims
from .config import Settings, load_settings
from .deadline import REQUEST_BUDGET_SECONDS, Deadline
from .errors import ConfigError
from .http import handle
from .jobs import FirestoreJobs, collection_from_env
from .jwks import KeySet
from .publish import PubSubPublisher
from .relay import Outcome, Relay
from .verify import Delivery, Head, Verifier

T = TypeVar("T")
log = logging.getLogger(__name__)


class Lazy(Generic[T]):
    """Made on first use, then shared by every request of this instance (and thread-safe)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def __call__(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._make()
                value = self._value
        return value


class Pipeline:
    def __init__(self, settings: Settings, project: str, jobs_collection: str) -> None:
        self.max_body_bytes = settings.max_body_bytes
        self.project: str | None = project
        key_set = KeySet(settings.jwks_url) if settings.jwks_url else None
        self._verifier = Verifier(settings, key_set)
        db = Lazy(lambda: firestore.Client(project=project))
        lease, ttl = settings.claim_lease_seconds, settings.dedup_ttl_hours
        claims = FirestoreClaims(db, settings.dedup_collection, lease, ttl)
        jobs = FirestoreJobs(db, jobs_collection, lease, ttl, deliveries=settings.dedup_collection)
        self._relay = Relay(
            claims, PubSubPublisher(Lazy(PublisherClient), project), settings.routes, jobs
        )

    def check_head(self, head: Head) -> str | None:
        return self._verifier.check_head(head)

    def verify(self, delivery: Delivery) -> str:
        return self._verifier.verify(delivery)

    def deliver(
        self, delivery: Delivery, scheme: str, deadline: Deadline, traceparent: str | None = None
    ) -> Outcome:
        return self._relay.deliver(delivery, scheme, deadline, traceparent)


def resolve_project(settings: Settings, env: Mapping[str, str]) -> str:
    if settings.project:
        return settings.project
    if env.get("FIRESTORE_EMULATOR_HOST") or env.get("PUBSUB_EMULATOR_HOST"):
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "must be set when using the emulators")
    try:
        _, project = google.auth.default()
    except DefaultCredentialsError:
        project = None
    if not project:
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "not set, and no project in the environment")
    return str(project)


def start(
    env: Mapping[str, str] | None = None, budget_seconds: float = REQUEST_BUDGET_SECONDS
) -> Callable[[flask.Request], flask.Response]:
    """Load and check the configuration; exit with one log line naming the variable if bad.

    `budget_seconds` is each request's time budget (shorter only in tests of it)."""
    env = os.environ if env is None else env
    logs.configure()
    try:
        settings = load_settings(env)
        pipeline = Pipeline(settings, resolve_project(settings, env), collection_from_env(env))
    except ConfigError as error:
        logs.emit("CRITICAL", f"bad configuration: {error}", variable=error.variable)
        raise SystemExit(1) from None
    for warning in settings.warnings:
        logs.emit("WARNING", warning)
    logs.emit(
        "INFO",
        "webhook relay ready",
        topics=settings.routes.topics(),
        schemes=_schemes(settings),
        project=pipeline.project,
    )
    return lambda request: handle(request, pipeline, budget_seconds)


def _schemes(settings: Settings) -> list[str]:
    schemes = []
    if settings.secrets.current():
        schemes.append("hmac")
    if settings.public_keys:
        schemes.append("ed25519")
    if settings.jwks_url and settings.jwt_audiences:
        schemes.append("jwt")
    if settings.dynamic_webhooks:
        schemes.append("keyset-ed25519")
    return schemes
