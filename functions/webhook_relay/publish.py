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
from google.pubsub_v1.services.publisher.transports.base import DEFAULT_CLIENT_INFO
from google.pubsub_v1.types import pubsub

from .deadline import Deadline
from .errors import Unavailable
from .rpc import Metadata, Unary, routing

CALL_SECONDS = 5.0


class Publisher(Protocol):
    def publish(
        self, topic: str, data: bytes, attributes: Mapping[str, str], deadline: Deadline
    ) -> str:
        """The message id once Pub/Sub has stored the message; `Unavailable` otherwise."""


_Message = pubsub.PubsubMessage.pb()
_Request = pubsub.PublishRequest.pb()
_Response = pubsub.PublishResponse.pb()


class PubSubPublisher:
    def __init__(self, client: Callable[[], PublisherClient], project: str) -> None:
        self._client = client
        self._project = project
        self._call: Unary | None = None
        self._topics: dict[str, tuple[str, Metadata]] = {}  # name -> path, routing header

    def publish(
        self, topic: str, data: bytes, attributes: Mapping[str, str], deadline: Deadline
    ) -> str:
        timeout = deadline.timeout(CALL_SECONDS)
        retry = Retry(
            predicate=if_transient_error, initial=0.05, maximum=1.0, multiplier=2, timeout=timeout
        )
        path, header = self._topics.get(topic) or self._topic(topic)
        try:
            request = _Request(topic=path, messages=[_Message(data=data, attributes=attributes)])
            # Pub/Sub's `Publish` call itself, not `client.publish`: that one batches, and with
            # one message a batch (what one request has) it starts threads and a future per
            # message: 0.9 ms of CPU a message against 0.35 ms through the generated client's
            # call, less again on the channel directly (rpc.py; bench/results.md, row 3). It
            # returns once Pub/Sub has stored the message, as a 2xx requires.
            response = (self._call or self._make_call())(request, header, timeout, retry)
            message_id: str = response.message_ids[0]
        except (api_exceptions.GoogleAPIError, ValueError, IndexError) as exc:
            raise Unavailable(f"Pub/Sub publish to {topic} failed ({type(exc).__name__})") from exc
        return message_id

    def _make_call(self) -> Unary:
        # Two first requests at once may each make one: equal, and one is kept. No lock.
        channel = self._client()._transport.grpc_channel
        call = self._call = Unary(
            channel, "/google.pubsub.v1.Publisher/Publish", _Request, _Response, DEFAULT_CLIENT_INFO
        )
        return call

    def _topic(self, topic: str) -> tuple[str, Metadata]:
        path = f"projects/{self._project}/topics/{topic}"
        entry = self._topics[topic] = (path, routing(topic=path))  # few: one per route
        return entry
