"""`webhook_relay.watch(name)`: put an interaction or video operation on the safety net's watch
list, so `reconcile` publishes its terminal event if Gemini never delivers one.

    import webhook_relay
    interaction = client.interactions.create(...)
    webhook_relay.watch(f"interactions/{interaction.id}")

Batch jobs need no watching: `reconcile` lists them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache

from .deadline import Deadline
from .jobs import FirestoreJobs, JobKey, key_for_name
from .reconcile_app import JobStoreSettings, job_store_settings

WATCH_SECONDS = 10.0


def watch(name: str, *, project: str | None = None) -> bool:
    """Watch the job `name` (a resource name, or a bare interaction id). True if it is newly
    watched, False if the relay already knew the job. Settings from the environment
    (GOOGLE_CLOUD_PROJECT, FIRESTORE_EMULATOR_HOST, RELAY_JOBS_COLLECTION); `project` overrides.

    Raises `ValueError` for a name that is no job's, `ConfigError` for bad settings, and
    `Unavailable` when Firestore does not answer in time."""
    key = key_for_name(name)
    return watch_key(key, name.strip(), project, os.environ)


def watch_key(key: JobKey, name: str, project: str | None, env: Mapping[str, str]) -> bool:
    settings = job_store_settings(env, project)
    store = _store(
        settings.project,
        settings.collection,
        settings.ttl_hours,
        settings.lease_seconds,
        env.get("FIRESTORE_EMULATOR_HOST"),
    )
    return store.watch(key, name, Deadline(WATCH_SECONDS))


@lru_cache(maxsize=4)
def _store(
    project: str, collection: str, ttl_hours: int, lease_seconds: int, emulator: str | None
) -> FirestoreJobs:
    # One client per settings, reused: an application may watch every job it starts.
    return JobStoreSettings(project, collection, ttl_hours, lease_seconds).store()
