"""`webhook-relay tail`: print the events arriving on subscriptions, acknowledging each.

Synchronous pull, one subscription after the other, so a run is deterministic: a message is
acknowledged right after it is printed, and one pulled but not printed (because --count was
reached, or Ctrl-C) is handed back at once instead of waiting for its ack deadline.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from google.api_core import exceptions
from google.cloud import pubsub_v1

from ..subscriber import NotARelayEvent, RelayEvent, parse_event
from . import state as dev_state
from ._common import (
    CALL_SECONDS,
    PubSubTarget,
    api_error,
    fail,
    note,
    pubsub_target,
    routes_for,
    topic_of,
)

DEV_SUFFIX = "-dev"
IDLE_POLL_SECONDS = 0.25
COLOURS = {
    "succeeded": "green",
    "completed": "green",
    "generated": "green",
    "failed": "red",
    "expired": "red",
    "cancelled": "yellow",
    "requires_action": "yellow",
}


@click.command()
@click.option("--project", help="Default: the dev project, else GOOGLE_CLOUD_PROJECT.")
@click.option(
    "--subscription",
    "subscriptions",
    multiple=True,
    metavar="S",
    help="A subscription to read (repeatable). Default: the dev subscriptions, one per topic.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print each whole CloudEvent as one JSON line."
)
@click.option("--count", type=click.IntRange(1), help="Exit after this many events.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    help="Exit after this many seconds without an event (status 1 if --count was not reached).",
)
@dev_state.state_dir_option()
def tail(
    project: str | None,
    subscriptions: Sequence[str],
    as_json: bool,
    count: int | None,
    timeout: float | None,
    state_dir: Path,
) -> None:
    """Print the normalized events arriving on the relay's subscriptions.

    One line per event: time, type, subject, output URI (or error, or why it was
    quarantined), topic. Each message is acknowledged once printed. Talks to the emulator
    of a running `webhook-relay dev` (or PUBSUB_EMULATOR_HOST), else to Pub/Sub itself.

    \b
    Examples:
      webhook-relay tail
      webhook-relay tail --json --count 1 --timeout 30
      webhook-relay tail --subscription gemini-batch-dev
    """
    # Polling with return_immediately is what keeps a run deterministic (see the module).
    warnings.filterwarnings("ignore", "The return_immediately flag", DeprecationWarning)
    target = pubsub_target(project, state_dir)
    names = list(subscriptions) or _default_subscriptions(target)
    client = pubsub_v1.SubscriberClient()
    try:
        topics = {name: topic_of(client, target, name) for name in names}
        note(
            f"tailing {', '.join(names)} ({target.describe()})"
            + ("" if count or timeout else "; Ctrl-C to stop")
        )
        seen = _tail(client, target, topics, as_json, count, timeout)
    finally:
        client.close()
    if count is not None and seen < count and timeout is not None:
        fail(f"{seen} of {count} events, then nothing for {timeout:g} s")


def _default_subscriptions(target: PubSubTarget) -> list[str]:
    if target.state is not None:
        return list(target.state.subscriptions)
    routes = routes_for(None, None, None)
    return [topic + DEV_SUFFIX for topic in routes.topics()]


def _tail(
    client: Any,
    target: PubSubTarget,
    topics: dict[str, str],
    as_json: bool,
    count: int | None,
    timeout: float | None,
) -> int:
    seen = 0
    last_event = time.monotonic()
    path, unprinted = "", []  # pulled, not yet printed: handed back if we stop early
    try:
        while count is None or seen < count:
            got_any = False
            for name, topic in topics.items():
                if count is not None and seen >= count:
                    break
                path = target.subscription_path(name)
                wanted = 10 if count is None else min(10, count - seen)
                try:
                    response = client.pull(
                        request={
                            "subscription": path,
                            "max_messages": wanted,
                            # Polling: never hold messages in a long-poll nobody waits for.
                            "return_immediately": True,
                        },
                        timeout=CALL_SECONDS,
                    )
                except exceptions.DeadlineExceeded:
                    continue
                except exceptions.GoogleAPIError as error:
                    fail(f"pull from {name} failed: {api_error(error)}")
                unprinted = list(response.received_messages)
                while unprinted and (count is None or seen < count):
                    item = unprinted[0]
                    if _show(item.message, topic, name, as_json):
                        seen += 1
                        got_any = True
                    client.acknowledge(request={"subscription": path, "ack_ids": [item.ack_id]})
                    unprinted.pop(0)
                _hand_back(client, path, unprinted)
                unprinted = []
            if got_any:
                last_event = time.monotonic()
            elif timeout is not None and time.monotonic() - last_event >= timeout:
                break
            else:
                time.sleep(IDLE_POLL_SECONDS)
    except KeyboardInterrupt:
        _hand_back(client, path, unprinted)
        note("stopped")
    return seen


def _hand_back(client: Any, path: str, items: list[Any]) -> None:
    if items:
        client.modify_ack_deadline(
            request={
                "subscription": path,
                "ack_ids": [item.ack_id for item in items],
                "ack_deadline_seconds": 0,
            }
        )


def _show(message: Any, topic: str, subscription: str, as_json: bool) -> bool:
    try:
        event = parse_event(message)
    except NotARelayEvent as error:
        note(f"skipped message {message.message_id} on {subscription}: {error}")
        return False
    if as_json:
        click.echo(json.dumps(event.cloudevent, ensure_ascii=False, separators=(",", ":")))
    else:
        click.echo(line(event, topic))
    return True


def line(event: RelayEvent, topic: str) -> str:
    """time, type, subject, where the output is (or what went wrong), topic."""
    if event.quarantined:
        colour, what = "magenta", f"quarantined: {event.reason}"
    else:
        colour = COLOURS.get(event.outcome or "", "cyan")
        what = event.output_uri or _error(event) or "-"
    kind = click.style(f"{event.type:<28}", fg=colour)
    return f"{event.time}  {kind} {event.subject or '-'}  {what}  [{topic}]"


def _error(event: RelayEvent) -> str | None:
    if not event.error:
        return None
    code, message = event.error.get("code"), event.error.get("message")
    parts = [str(part) for part in (code, message) if part not in (None, "")]
    return "error " + ": ".join(parts) if parts else "error"
