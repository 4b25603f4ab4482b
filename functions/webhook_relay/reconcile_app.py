"""Wiring of `reconcile`: its settings, clients, and the HTTP answer of the scheduled function.

Reads only its own variables (and those it shares with the relay: project, topics, routes,
TTL, lease); never the relay's signing secrets or key set, so each function can be deployed
with its own configuration.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import flask
import google.auth
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import firestore
from google.cloud.pubsub_v1 import PublisherClient

from . import logs
from .app import Lazy
from .config import MIN_CLAIM_LEASE_SECONDS
from .errors import ConfigError
from .jobs import FirestoreJobs, collection_from_env
from .publish import PubSubPublisher
from .reconcile import STORE_CALL_SECONDS, Policy, Reconciler, Summary
from .routing import DEFAULT_TOPIC_PREFIX, Routes, parse_routes, valid_topic_id

# What `reconcile` reads besides the variables it shares with `receive_webhook`.
ENVIRONMENT = (
    "RELAY_PUBLIC_URL",
    "RELAY_JOBS_COLLECTION",
    "RELAY_RECONCILE_GRACE_SECONDS",
    "RELAY_RECONCILE_LOOKBACK_HOURS",
    "RELAY_REENABLE_WEBHOOKS",
    "GEMINI_API_KEY",
    "GEMINI_API_KEY_FILE",
    "GEMINI_API_BASE_URL",
    "GEMINI_API_VERSION",
)


@dataclass(frozen=True)
class JobStoreSettings:
    project: str
    collection: str
    ttl_hours: int
    lease_seconds: int
    # The delivery records: before taking over a job a delivery claimed, its own record is
    # read, and a published one adopted rather than the event published again.
    deliveries: str | None = None

    def store(self, client: Callable[[], firestore.Client] | None = None) -> FirestoreJobs:
        made = client or Lazy(lambda: firestore.Client(project=self.project))
        return FirestoreJobs(
            made,
            self.collection,
            self.lease_seconds,
            self.ttl_hours,
            call_seconds=STORE_CALL_SECONDS,
            deliveries=self.deliveries,
        )


@dataclass(frozen=True)
class ReconcileSettings:
    store: JobStoreSettings
    routes: Routes
    policy: Policy


def job_store_settings(env: Mapping[str, str], project: str | None = None) -> JobStoreSettings:
    return JobStoreSettings(
        project=project or project_from_env(env),
        collection=collection_from_env(env),
        ttl_hours=_integer(env, "RELAY_DEDUP_TTL_HOURS", 72, 25, 24 * 365),
        lease_seconds=_integer(
            env, "RELAY_CLAIM_LEASE_SECONDS", 30, MIN_CLAIM_LEASE_SECONDS, 3_600
        ),
        deliveries=deliveries_from_env(env),
    )


def deliveries_from_env(env: Mapping[str, str]) -> str:
    return env.get("RELAY_DEDUP_COLLECTION", "").strip() or "webhook_deliveries"


def load_reconcile_settings(env: Mapping[str, str]) -> ReconcileSettings:
    prefix = env.get("RELAY_TOPIC_PREFIX", DEFAULT_TOPIC_PREFIX)
    routes = parse_routes(env.get("RELAY_ROUTES"), prefix)
    if not all(valid_topic_id(topic) for topic in routes.topics()):
        raise ConfigError("RELAY_TOPIC_PREFIX", "makes a topic id Pub/Sub does not allow")
    reenable = env.get("RELAY_REENABLE_WEBHOOKS", "").strip().lower() or "false"
    if reenable not in ("true", "false"):
        raise ConfigError("RELAY_REENABLE_WEBHOOKS", "must be true or false")
    store = job_store_settings(env)
    lookback = _integer(env, "RELAY_RECONCILE_LOOKBACK_HOURS", 72, 1, 24 * 30)
    if lookback > store.ttl_hours:
        # A batch still in the look-back whose records have expired would be reconciled again:
        # a second terminal event for every delivered batch.
        raise ConfigError(
            "RELAY_RECONCILE_LOOKBACK_HOURS",
            f"must not be longer than RELAY_DEDUP_TTL_HOURS ({store.ttl_hours}): job records "
            "must outlive the look-back, or delivered batches are published again",
        )
    policy = Policy(
        public_url=env.get("RELAY_PUBLIC_URL", "").strip() or None,
        grace=timedelta(seconds=_integer(env, "RELAY_RECONCILE_GRACE_SECONDS", 900, 0, 7 * 86_400)),
        lookback=timedelta(hours=lookback),
        reenable_webhooks=reenable == "true",
        deliveries_collection=store.deliveries,
    )
    return ReconcileSettings(store, routes, policy)


def project_from_env(env: Mapping[str, str]) -> str:
    project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT")
    if project:
        return project
    if env.get("FIRESTORE_EMULATOR_HOST") or env.get("PUBSUB_EMULATOR_HOST"):
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "must be set when using the emulators")
    try:
        _, found = google.auth.default()
    except DefaultCredentialsError:
        found = None
    if not found:
        raise ConfigError("GOOGLE_CLOUD_PROJECT", "not set, and no project in the environment")
    return str(found)


class Service:
    """What the function serves: one run per request. The Gemini API key is read at each run
    (a Secret Manager volume shows a new version without a restart), so `reconcile` starts,
    and deploys, before the key is set; a run without one is 503 with one ERROR line."""

    def __init__(self, env: Mapping[str, str], settings: ReconcileSettings) -> None:
        self._env = dict(env)
        self._settings = settings
        self._store = settings.store.store()
        project = settings.store.project
        self._publisher = PubSubPublisher(Lazy(PublisherClient), project)
        self._made: tuple[str, Reconciler] | None = None
        self._lock = threading.Lock()

    def run(self, summary: Summary | None = None) -> Summary:
        from .gemini import api_key  # noqa: PLC0415 (google-genai: reconcile's alone)

        summary = summary if summary is not None else Summary()
        try:
            key = api_key(self._env)
        except ConfigError as error:
            summary.detail = "no usable Gemini API key"
            logs.emit(
                "ERROR",
                f"reconcile cannot run: no usable GEMINI_API_KEY ({error})",
                status="no_api_key",
                variable="GEMINI_API_KEY",
            )
            return summary
        return self._reconciler(key).run(summary)

    def _reconciler(self, key: str) -> Reconciler:
        # Imported here: the SDK is this function's dependency alone.
        from .reconcile_gemini import SdkGeminiJobs, client_for_key  # noqa: PLC0415

        with self._lock:
            if self._made is None or self._made[0] != key:
                gemini = SdkGeminiJobs(client_for_key(self._env, key))
                reconciler = Reconciler(
                    gemini,
                    self._store,
                    self._publisher,
                    self._settings.routes,
                    self._settings.policy,
                )
                self._made = (key, reconciler)
            return self._made[1]


def build(env: Mapping[str, str]) -> Service:
    """Every client of a run, from the environment; `ConfigError` names a bad variable. A
    missing key (GEMINI_API_KEY unset or empty, or an empty GEMINI_API_KEY_FILE) is no
    start-up error: each run reports it."""
    from .gemini import api_key, api_version, base_url  # noqa: PLC0415 (as above)

    settings = load_reconcile_settings(env)
    base_url(env)
    api_version(env)
    if not _key_missing(env):
        api_key(env)  # set, but unusable (both set, an unreadable file, white space): now
    return Service(env, settings)


def _key_missing(env: Mapping[str, str]) -> bool:
    if env.get("GEMINI_API_KEY", "").strip():
        return False
    path = env.get("GEMINI_API_KEY_FILE", "").strip()
    if not path:
        return True
    try:
        return not Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False  # `api_key` names the file's problem


def start(env: Mapping[str, str] | None = None) -> Callable[[flask.Request], flask.Response]:
    """Check the configuration; exit with one log line naming the variable if bad."""
    env = os.environ if env is None else env
    logs.configure()
    try:
        service = build(env)
    except ConfigError as error:
        logs.emit("CRITICAL", f"bad configuration: {error}", variable=error.variable)
        raise SystemExit(1) from None
    logs.emit("INFO", "reconcile ready")
    return lambda request: handle(request, service)


def handle(request: flask.Request, service: Service) -> flask.Response:
    if request.method not in ("GET", "POST"):
        response = flask.jsonify({"status": "method_not_allowed"})
        response.status_code = 405
        response.headers["Allow"] = "GET, POST"
        return response
    summary = service.run()
    response = flask.jsonify(summary.to_json())
    # 503 only when the run reached nothing at all (or had no key): the scheduler's retry, and
    # the alert on failing runs, are for that; a partial run is still a run (its errors are in
    # the log).
    response.status_code = 503 if summary.unavailable else 200
    response.headers["Cache-Control"] = "no-store"
    return response


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"\d+", raw) or not low <= int(raw) <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high}")
    return int(raw)
