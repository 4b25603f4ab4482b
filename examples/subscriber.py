"""React to finished Gemini jobs: a streaming-pull subscriber of the relay's topics.

It prints where the output of each `batch.succeeded` and `video.generated` event is. Each event
arrives verified and deduplicated by the relay, as a CloudEvent that
`webhook_relay.subscriber.relay_callback` reads into a typed `RelayEvent`, hands to `handle`,
and then acknowledges, waiting for Pub/Sub to confirm the ack (final with exactly-once
delivery, which Terraform enables). A handler can still see an event twice: an ack that failed
("redelivery possible" in the log), a crash between the work and the ack. So `handle` is
idempotent on the CloudEvent `id`: it claims each id before the work and skips an id it has
already claimed.

Against the local dev setup (three shells, from the repository root):

    .venv/bin/webhook-relay dev
        # prints, among others: export PUBSUB_EMULATOR_HOST=127.0.0.1:NNNNN GOOGLE_CLOUD_PROJECT=…
    export PUBSUB_EMULATOR_HOST=127.0.0.1:NNNNN GOOGLE_CLOUD_PROJECT=demo-project
    .venv/bin/python examples/subscriber.py
    .venv/bin/webhook-relay send batch.succeeded
    .venv/bin/webhook-relay send video.generated --scheme jwt

It reads `gemini-batch-dev` and `gemini-video-dev`, the subscriptions `dev` created; a message
goes to one reader of a subscription, so do not run `webhook-relay tail` on them meanwhile.

Against Pub/Sub itself (Application Default Credentials, the subscriptions from infra/):

    python examples/subscriber.py --project my-project \\
        --subscription gemini-batch-sub --subscription gemini-video-sub

A production subscriber would rather have subscriptions that receive only what it handles,
with a filter on the `event_type` attribute (`attributes.event_type = "batch.succeeded"`) or
on its own `user_metadata` (`attributes.um_team = "search"`), and would keep the ids it
finished in durable storage (below: in memory, so a restart forgets them).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading

from google.cloud.pubsub_v1 import SubscriberClient

from webhook_relay import logs
from webhook_relay.subscriber import RelayEvent, relay_callback

log = logging.getLogger("subscriber")
# Callbacks run on several threads at once, and `print` writes the text and the newline
# separately: without the lock, two events' lines can interleave.
_output = threading.Lock()


def say(line: str) -> None:
    with _output:
        print(line, flush=True)


class Handled:
    """Event ids handled or being handled. In memory here, so a restart forgets them; in
    production a durable store written with the work itself: a unique key on the event id in
    the database the work writes to, in the same transaction, or a Firestore document per id
    created with `create()`, which fails if it exists."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def claim(self, event_id: str) -> bool:
        """True the first time for an id: the caller does the work."""
        with self._lock:
            if event_id in self._ids:
                return False
            self._ids.add(event_id)
            return True

    def release(self, event_id: str) -> None:
        """The work failed: let a redelivery do it."""
        with self._lock:
            self._ids.discard(event_id)


handled = Handled()


def handle(event: RelayEvent) -> None:
    """Called once per delivered event, on the client library's threads. Raising makes
    `relay_callback` nack the message: Pub/Sub redelivers it after the subscription's backoff."""
    if not handled.claim(event.id):
        log.info("event %s already handled: skipped", event.id)  # a redelivery
        return
    try:
        if event.type == "batch.succeeded":
            # No output_uri: an inline batch, whose results come from the Gemini API by job id.
            where = event.output_uri or "inline: get the batch by its id from the Gemini API"
            say(f"batch {event.job_id} succeeded: {where}")
        elif event.type == "video.generated":
            say(f"video {event.job_id} generated: {event.output_uri} ({event.file_name})")
        else:
            log.info("ignoring %s %s", event.type, event.subject)
    except Exception:
        handled.release(event.id)
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description="React to finished Gemini jobs.")
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", "demo-project"))
    parser.add_argument(
        "--subscription",
        action="append",
        help="subscription id (repeatable); default: gemini-batch-dev and gemini-video-dev",
    )
    parser.add_argument("--timeout", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--json-logs",
        action="store_true",
        help="log JSON lines for Cloud Logging (on Cloud Run or GKE): each line then carries "
        "the trace of the Gemini delivery that published the event",
    )
    args = parser.parse_args()
    if args.json_logs:
        logs.configure()
    else:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    names = args.subscription or ["gemini-batch-dev", "gemini-video-dev"]
    subscriber = SubscriberClient()
    with subscriber:
        streams = [
            subscriber.subscribe(
                f"projects/{args.project}/subscriptions/{name}",
                callback=relay_callback(handle, project=args.project),
            )
            for name in names
        ]
        log.info("listening on %s (Ctrl-C to stop)", ", ".join(names))
        try:
            done, _ = concurrent.futures.wait(
                streams, timeout=args.timeout, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            for stream in done:
                stream.result()  # raises what ended it, e.g. NotFound for a subscription
        except KeyboardInterrupt:
            pass
        except Exception as error:
            log.error("subscriber stopped: %s", error)
            return 1
        finally:
            for stream in streams:
                stream.cancel()  # stops pulling; the messages being handled still finish
            for stream in streams:
                with contextlib.suppress(Exception):  # already reported above
                    stream.result(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
