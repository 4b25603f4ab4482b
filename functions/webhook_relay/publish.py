"""Publish one event to Pub/Sub and wait for Pub/Sub to confirm it.

The answer to Gemini waits for the confirmation: after a 2xx, Cloud Functions throttles the
instance's CPU, and an unconfirmed publish could then be lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_transient_error
from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.pubsub_v1.types import BatchSettings

from .deadline import Deadline
from .errors import Unavailable

CALL_SECONDS = 5.0


class Publisher(Protocol):
    def publish(
        self, topic: str, data: bytes, attributes: Mapping[str, str], deadline: Deadline
    ) -> str:
        """The message id once Pub/Sub has stored the message; `Unavailable` otherwise."""


def new_client() -> PublisherClient:
    # One message per request, sent at once: batching would only add latency to each answer.
    return PublisherClient(batch_settings=BatchSettings(max_messages=1, max_latency=0.0))


class PubSubPublisher:
    def __init__(self, client: Callable[[], PublisherClient], project: str) -> None:
        self._client = client
        self._project = project

    def publish(
        self, topic: str, data: bytes, attributes: Mapping[str, str], deadline: Deadline
    ) -> str:
        client = self._client()
        timeout = deadline.timeout(CALL_SECONDS)
        retry = Retry(
            predicate=if_transient_error, initial=0.05, maximum=1.0, multiplier=2, timeout=timeout
        )
        try:
            future = client.publish(
                f"projects/{self._project}/topics/{topic}",
                data,
                retry=retry,
                timeout=timeout,
                **attributes,
            )
            message_id: str = future.result(timeout=timeout + 0.25)
        except TimeoutError:
            raise Unavailable(f"Pub/Sub did not confirm the publish to {topic} in time") from None
        except (api_exceptions.GoogleAPIError, RuntimeError, ValueError) as exc:
            raise Unavailable(f"Pub/Sub publish to {topic} failed ({type(exc).__name__})") from exc
        return message_id
