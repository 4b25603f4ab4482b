"""`webhook-relay redrive`: re-publish what waits in a subscription through the routing table.

For the unrouted topic's subscription after a routing change, or a dead-letter subscription
after a subscriber was fixed. Each message is routed by its `event_type` attribute (else its
CloudEvent type), published with the same data and attributes, and acknowledged only once
Pub/Sub has confirmed that publish. A message that would go back to the topic it came from
(an unknown type on the unrouted topic, a quarantined body) is left where it is: it is held
until the run ends, then handed back, so a run always ends and moves each message once.
stdout has a line per message and the summary; stderr a progress line every 2 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from google.api_core import exceptions
from google.cloud import pubsub_v1

from ..normalize import QUARANTINED
from ..routing import Routes
from ..subscriber import NotARelayEvent, parse_event
from . import state as dev_state
from ._common import (
    Progress,
    PubSubTarget,
    api_error,
    fail,
    note,
    pubsub_target,
    routes_for,
    topic_of,
)

BATCH = 100
HOLD_SECONDS = 120  # keeps a left message from being pulled again during this run
PUBLISH_SECONDS = 30.0


@dataclass
class _Tally:
    moved: int = 0
    left: int = 0
    failed: int = 0
    held: dict[str, str] = field(default_factory=dict)  # message id -> latest ack id

    def describe(self, dry_run: bool) -> str:
        verb = "would move" if dry_run else "moved"
        return f"{verb} {self.moved}, left {self.left}, failed {self.failed}"


@click.command()
@click.option("--subscription", required=True, metavar="S", help="The subscription to empty.")
@click.option("--project", help="Default: the dev project, else GOOGLE_CLOUD_PROJECT.")
@click.option(
    "--prefix",
    help="Topic prefix of the routing table. "
    "Default: RELAY_TOPIC_PREFIX, else dev's, else gemini-.",
)
@click.option(
    "--routes",
    "routes_json",
    metavar="JSON",
    help="The routing table, as RELAY_ROUTES. Default: RELAY_ROUTES, else the default table.",
)
@click.option("--max", "limit", type=click.IntRange(1), help="Handle at most this many messages.")
@click.option("--dry-run", is_flag=True, help="Show where each message would go; move nothing.")
@click.option(
    "--wait",
    type=click.FloatRange(0.5, 60),
    default=3.0,
    show_default=True,
    help="Seconds an empty pull waits before the subscription counts as empty.",
)
@dev_state.state_dir_option()
def redrive(
    subscription: str,
    project: str | None,
    prefix: str | None,
    routes_json: str | None,
    limit: int | None,
    dry_run: bool,
    wait: float,
    state_dir: Path,
) -> None:
    """Re-publish the messages waiting in a subscription through the current routing table.

    Works on the unrouted topic's subscription and on dead-letter subscriptions. Each
    message is acknowledged only after its re-publish is confirmed; one whose route leads
    back to its own topic is left in place and reported. Exit status 1 if a publish failed.

    \b
    Examples:
      webhook-relay redrive --subscription gemini-unrouted-dev
      RELAY_ROUTES='{"batch.*": "gemini-batch", "*": "gemini-other"}' \\
        webhook-relay redrive --subscription gemini-unrouted-dev --dry-run
      webhook-relay redrive --project my-project --subscription gemini-dead-letter-sub
    """
    target = pubsub_target(project, state_dir)
    routes = routes_for(prefix, routes_json, target.state)
    subscriber = pubsub_v1.SubscriberClient()
    publisher = pubsub_v1.PublisherClient()
    try:
        source = topic_of(subscriber, target, subscription)
        note(
            f"redriving {subscription} (topic {source}; {target.describe()}) through "
            f"{_describe(routes)}"
        )
        tally = _Tally()
        with Progress(lambda: f"redriving {subscription}: {tally.describe(dry_run)} so far"):
            _redrive(
                subscriber,
                publisher,
                target,
                subscription,
                source,
                routes,
                limit,
                dry_run,
                tally,
                wait,
            )
    finally:
        publisher.stop()
        subscriber.close()
    click.echo(tally.describe(dry_run))
    if tally.failed:
        fail(f"{tally.failed} message(s) could not be re-published; they stay in {subscription}")


def _describe(routes: Routes) -> str:
    table = ", ".join(f"{pattern}→{topic}" for pattern, topic in routes.patterns.items())
    return f"{table}; otherwise {routes.fallback or routes.unrouted}"


def _redrive(
    subscriber: Any,
    publisher: Any,
    target: PubSubTarget,
    subscription: str,
    source: str,
    routes: Routes,
    limit: int | None,
    dry_run: bool,
    tally: _Tally,
    wait: float,
) -> None:
    path = target.subscription_path(subscription)
    handled: set[str] = set()
    try:
        while limit is None or len(handled) < limit:
            wanted = BATCH if limit is None else min(BATCH, limit - len(handled))
            try:
                response = subscriber.pull(
                    request={"subscription": path, "max_messages": wanted}, timeout=wait
                )
            except exceptions.DeadlineExceeded:
                break
            except exceptions.GoogleAPIError as error:
                fail(f"pull from {subscription} failed: {api_error(error)}")
            fresh = []
            for item in response.received_messages:
                message_id = item.message.message_id
                if message_id in handled:  # its hold ran out: hold it again
                    tally.held[message_id] = item.ack_id
                    _modify(subscriber, path, [item.ack_id], HOLD_SECONDS)
                else:
                    handled.add(message_id)
                    fresh.append(item)
            if not fresh:
                break
            _route_batch(subscriber, publisher, target, path, source, routes, fresh, dry_run, tally)
    finally:
        # Hand back what stays, at once: the next reader need not wait for the ack deadline.
        _modify(subscriber, path, list(tally.held.values()), 0)


def _route_batch(
    subscriber: Any,
    publisher: Any,
    target: PubSubTarget,
    path: str,
    source: str,
    routes: Routes,
    items: list[Any],
    dry_run: bool,
    tally: _Tally,
) -> None:
    pending = []
    for item in items:
        message = item.message
        attributes = dict(message.attributes)
        name = attributes.get("webhook_id") or f"message {message.message_id}"
        event_type = _event_type(message, attributes)
        if event_type is None:
            _leave(subscriber, path, item, tally, f"{name}  not a relay event: nowhere to route it")
            continue
        topic = routes.unrouted if event_type == QUARANTINED else routes.topic_for(event_type)
        if topic == source:
            _leave(subscriber, path, item, tally, f"{name}  {event_type}: routes back to {topic}")
            continue
        if dry_run:
            tally.moved += 1
            _hold(subscriber, path, item, tally)
            click.echo(f"would move {name}  {event_type} → {topic}")
            continue
        future = publisher.publish(target.topic_path(topic), message.data, **attributes)
        pending.append((item, name, event_type, topic, future))
    for item, name, event_type, topic, future in pending:
        try:
            future.result(timeout=PUBLISH_SECONDS)
        except Exception as error:  # any failure: the message must stay
            tally.failed += 1
            _hold(subscriber, path, item, tally)
            click.echo(
                "failed "
                + click.style(f"{name}  {event_type} → {topic}", fg="red")
                + f": {api_error(error)}"
            )
            continue
        subscriber.acknowledge(request={"subscription": path, "ack_ids": [item.ack_id]})
        tally.moved += 1
        click.echo("moved  " + click.style(f"{name}  {event_type} → {topic}", fg="green"))


def _event_type(message: Any, attributes: dict[str, str]) -> str | None:
    declared = attributes.get("event_type")
    if declared:
        return declared
    try:
        return parse_event(message).type
    except NotARelayEvent:
        return None


def _leave(subscriber: Any, path: str, item: Any, tally: _Tally, why: str) -> None:
    tally.left += 1
    _hold(subscriber, path, item, tally)
    click.echo("left   " + click.style(why, fg="yellow"))


def _hold(subscriber: Any, path: str, item: Any, tally: _Tally) -> None:
    """Keep a message that stays out of this run's pulls; handed back when the run ends."""
    tally.held[item.message.message_id] = item.ack_id
    _modify(subscriber, path, [item.ack_id], HOLD_SECONDS)


def _modify(subscriber: Any, path: str, ack_ids: Iterable[str], seconds: int) -> None:
    ids = list(ack_ids)
    for start in range(0, len(ids), 1000):
        try:
            subscriber.modify_ack_deadline(
                request={
                    "subscription": path,
                    "ack_ids": ids[start : start + 1000],
                    "ack_deadline_seconds": seconds,
                }
            )
        except Exception as error:  # a lease that lapsed: the message is back anyway
            note(f"could not change the lease of {len(ids)} message(s): {api_error(error)}")
