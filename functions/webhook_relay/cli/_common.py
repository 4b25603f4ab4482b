"""What the commands share: one-line errors, progress lines, the Pub/Sub target, the routing
table, the lifecycle commands' default secret name."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import click
from google.api_core import exceptions

from ..emulators import answers
from ..errors import ConfigError
from ..routing import DEFAULT_TOPIC_PREFIX, Routes, parse_routes
from . import state as dev_state

DEFAULT_PROJECT = "demo-project"
CALL_SECONDS = 10.0
# Owned here, not by lifecycle.py (options) or lifecycle_steps.py (what they do): both use it.
DEFAULT_SECRET = "gemini-webhook-relay-signing-secrets"  # noqa: S105 (a name, not a value)
PROGRESS_EVERY_SECONDS = 2.0


def fail(message: str) -> NoReturn:
    """Stop the command: `Error: <message>` on stderr, one line, exit status 1."""
    raise click.ClickException(" ".join(message.split()))


def note(message: str) -> None:
    """Progress and context on stderr, so stdout stays clean for the events themselves."""
    click.secho(message, err=True, dim=True)


class Progress:
    """`with Progress(describe):` a line on stderr every `every` seconds while the block runs.

    From a thread of its own, so that a call stalled inside the block (a pull, a publish, a
    query) still shows the command is alive; stdout stays the command's parseable output.
    """

    def __init__(self, describe: Callable[[], str], every: float = PROGRESS_EVERY_SECONDS) -> None:
        self._describe = describe
        self._every = every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            try:
                note(self._describe())
            except Exception:  # noqa: S112 (a progress line must never end the command)
                continue


@dataclass(frozen=True)
class PubSubTarget:
    project: str
    emulator_host: str | None  # None: the real Pub/Sub, with Application Default Credentials
    state: dev_state.DevState | None

    def describe(self) -> str:
        where = f"emulator {self.emulator_host}" if self.emulator_host else "Pub/Sub"
        return f"{where}, project {self.project}"

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        if subscription.startswith("projects/"):
            return subscription
        return f"projects/{self.project}/subscriptions/{subscription}"


def pubsub_target(project: str | None, state_dir: Path) -> PubSubTarget:
    """Where tail and redrive talk to, in this order:

    PUBSUB_EMULATOR_HOST set: that emulator. Else a running `webhook-relay dev` (its state
    dir) whose project is the one asked for, or no project asked for: its emulator. Else the
    real Pub/Sub, project from --project or GOOGLE_CLOUD_PROJECT.
    """
    state = dev_state.load(state_dir)
    if state is not None and project not in (None, state.project):
        state = None
    host = os.environ.get("PUBSUB_EMULATOR_HOST") or (state.pubsub_host if state else None)
    chosen = project or (state.project if state else None) or os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not chosen:
        if not host:
            fail("no project: pass --project or set GOOGLE_CLOUD_PROJECT")
        chosen = DEFAULT_PROJECT
    if host:
        if not answers(host, timeout=2):
            fail(f"no Pub/Sub emulator answers at {host} (PUBSUB_EMULATOR_HOST or the dev state)")
        # The client libraries read it when a client is made.
        os.environ["PUBSUB_EMULATOR_HOST"] = host
    return PubSubTarget(chosen, host, state)


def routes_for(
    prefix: str | None,
    routes: str | None,
    state: dev_state.DevState | None,
    env: Mapping[str, str] | None = None,
) -> Routes:
    """The routing table: options, else RELAY_ROUTES / RELAY_TOPIC_PREFIX, else dev's, else the
    default table."""
    env = os.environ if env is None else env
    chosen_prefix = prefix
    if chosen_prefix is None:
        chosen_prefix = env.get("RELAY_TOPIC_PREFIX")
    if chosen_prefix is None:
        chosen_prefix = state.prefix if state else DEFAULT_TOPIC_PREFIX
    raw = routes if routes is not None else env.get("RELAY_ROUTES")
    try:
        return parse_routes(raw, chosen_prefix)
    except ConfigError as error:
        where = "--routes" if routes is not None else error.variable
        fail(f"{where}: {str(error).partition(': ')[2]}")


def api_error(error: BaseException) -> str:
    """A Google API error in a few words, without a stack."""
    message: Any = getattr(error, "message", None) or str(error)
    text = " ".join(str(message).split())
    name = type(error).__name__
    return f"{name}: {text}" if text and text != name else name


def topic_of(client: Any, target: PubSubTarget, name: str) -> str:
    """The topic id a subscription is attached to; one clear line if it cannot be read."""
    try:
        subscription = client.get_subscription(
            subscription=target.subscription_path(name), timeout=CALL_SECONDS
        )
    except exceptions.NotFound:
        fail(f"subscription {name} does not exist ({target.describe()})")
    except exceptions.GoogleAPIError as error:
        fail(f"cannot read subscription {name} ({target.describe()}): {api_error(error)}")
    return str(subscription.topic).rpartition("/")[2]
