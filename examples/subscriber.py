"""React to finished Gemini jobs: a streaming-pull subscriber of the relay's topics.

It prints where the output of each `batch.succeeded` and `video.generated` event is, and
acknowledges every message. Each event arrives verified and deduplicated by the relay, as a
CloudEvent that `webhook_relay.subscriber.parse_event` reads into a typed `RelayEvent`.

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
with a filter on the `event_type` attribute (`attributes.event_type = "batch.succeeded"`), and
would deduplicate on `event.id` if it must act exactly once.
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
from google.cloud.pubsub_v1.subscriber.message import Message

from webhook_relay.subscriber import NotARelayEvent, parse_event

log = logging.getLogger("subscriber")
# Callbacks run on several threads at once, and `print` writes the text and the newline
# separately: without the lock, two events' lines can interleave.
_output = threading.Lock()


def say(line: str) -> None:
    with _output:
        print(line, flush=True)


def handle(message: Message) -> None:
    """Called by the client library, on its own threads, once per message."""
    try:
        event = parse_event(message)
    except NotARelayEvent as error:
        # Not published by the relay. Acknowledged so it is not redelivered forever; with a
        # dead-letter policy on the subscription, `message.nack()` would set it aside instead.
        log.warning("skipping message %s: %s", message.message_id, error)
        message.ack()
        return

    if event.type == "batch.succeeded":
        # No output_uri: an inline batch, whose results come from the Gemini API by job id.
        where = event.output_uri or "inline: get the batch by its id from the Gemini API"
        say(f"batch {event.job_id} succeeded: {where}")
    elif event.type == "video.generated":
        say(f"video {event.job_id} generated: {event.output_uri} ({event.file_name})")
    else:
        log.info("ignoring %s %s", event.type, event.subject)
    message.ack()  # after the work: a crash before this line means Pub/Sub redelivers it


def main() -> int:
    parser = argparse.ArgumentParser(description="React to finished Gemini jobs.")
    parser.add_argument("--project", default=os.environ.get("GOOGLE_CLOUD_PROJECT", "demo-project"))
    parser.add_argument(
        "--subscription",
        action="append",
        help="subscription id (repeatable); default: gemini-batch-dev and gemini-video-dev",
    )
    parser.add_argument("--timeout", type=float, help="stop after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    names = args.subscription or ["gemini-batch-dev", "gemini-video-dev"]
    subscriber = SubscriberClient()
    with subscriber:
        streams = [
            subscriber.subscribe(f"projects/{args.project}/subscriptions/{name}", callback=handle)
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
