"""rpc.Unary against a real gRPC server on loopback speaking Pub/Sub's `Publish` (the official
types' wire format): what it sends, what it retries, how errors and timeouts come out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_transient_error
from google.pubsub_v1.services.publisher import PublisherClient
from google.pubsub_v1.services.publisher.transports.base import DEFAULT_CLIENT_INFO
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.types import pubsub

from webhook_relay.rpc import Unary, routing

Request, Response = pubsub.PublishRequest.pb(), pubsub.PublishResponse.pb()
TOPIC = "projects/p/topics/gemini-batch"
Behaviour = Callable[[Any, grpc.ServicerContext], Any]


class Server:
    """Answers each `Publish` with the next behaviour (the last one repeats)."""

    def __init__(self) -> None:
        self.behaviours: list[Behaviour] = []
        self.seen: list[tuple[Any, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.unary_unary_rpc_method_handler(
            self._publish,
            request_deserializer=Request.FromString,
            response_serializer=Response.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "google.pubsub.v1.Publisher", {"Publish": handler}
                ),
            )
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def _publish(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.seen.append((request, dict(context.invocation_metadata())))
            behaviour = self.behaviours[min(len(self.seen), len(self.behaviours)) - 1]
        return behaviour(request, context)

    def __enter__(self) -> Server:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0)


def ok(request: Any, context: grpc.ServicerContext) -> Any:
    return Response(message_ids=[f"id-{len(request.messages)}"])


def fail(code: grpc.StatusCode, after: float = 0.0) -> Behaviour:
    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        time.sleep(after)
        context.abort(code, f"scripted {code.name}")

    return behaviour


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


@pytest.fixture
def call(server: Server) -> Iterator[Unary]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield Unary(
        channel,
        "/google.pubsub.v1.Publisher/Publish",
        Request,
        Response,
        DEFAULT_CLIENT_INFO,
        [("google-cloud-resource-prefix", "projects/p")],
    )
    channel.close()


def request() -> Any:
    return Request(topic=TOPIC, messages=[pubsub.PubsubMessage.pb()(data=b"{}")])


def retry() -> Retry:
    return Retry(predicate=if_transient_error, initial=0.01, maximum=0.05, timeout=30)


def test_the_request_goes_out_as_the_generated_client_sends_it(server: Server, call: Unary) -> None:
    server.behaviours = [ok]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    generated = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    generated.publish(topic=TOPIC, messages=[pubsub.PubsubMessage(data=b"{}")])
    channel.close()

    response = call(request(), routing(topic=TOPIC), 5.0, retry())

    assert list(response.message_ids) == ["id-1"]
    (theirs, their_metadata), (ours, our_metadata) = server.seen
    assert ours == theirs
    google = {"x-goog-request-params", "x-goog-api-client"}
    assert {k: v for k, v in our_metadata.items() if k in google} == {
        k: v for k, v in their_metadata.items() if k in google
    }
    assert our_metadata["x-goog-request-params"].startswith("topic=")
    assert our_metadata["google-cloud-resource-prefix"] == "projects/p"


def test_a_transient_error_is_retried(server: Server, call: Unary) -> None:
    server.behaviours = [fail(grpc.StatusCode.UNAVAILABLE), ok]

    response = call(request(), routing(topic=TOPIC), 5.0, retry())

    assert list(response.message_ids) == ["id-1"]
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.ALREADY_EXISTS, api_exceptions.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, api_exceptions.FailedPrecondition),
        (grpc.StatusCode.ABORTED, api_exceptions.Aborted),
        (grpc.StatusCode.NOT_FOUND, api_exceptions.NotFound),
    ],
)
def test_an_answer_is_the_api_cores_error_and_not_retried(
    server: Server, call: Unary, code: grpc.StatusCode, error: type[Exception]
) -> None:
    server.behaviours = [fail(code), ok]

    with pytest.raises(error):
        call(request(), routing(topic=TOPIC), 5.0, retry())
    assert len(server.seen) == 1


def test_without_a_retry_a_transient_error_reaches_the_caller(server: Server, call: Unary) -> None:
    server.behaviours = [fail(grpc.StatusCode.UNAVAILABLE), ok]

    with pytest.raises(api_exceptions.ServiceUnavailable):
        call(request(), routing(topic=TOPIC), 5.0, None)


def test_the_timeout_bounds_every_attempt_together(server: Server, call: Unary) -> None:
    # Each attempt fails transiently after 0.2 s; the retry alone would go on for 30 s.
    server.behaviours = [fail(grpc.StatusCode.UNAVAILABLE, after=0.2)]
    started = time.monotonic()

    with pytest.raises((api_exceptions.DeadlineExceeded, api_exceptions.RetryError)):
        call(request(), routing(topic=TOPIC), 0.7, retry())

    assert time.monotonic() - started < 5  # far below the retry's own 30 s
    assert 2 <= len(server.seen) <= 4


def test_a_server_that_never_answers_is_a_deadline_exceeded(server: Server, call: Unary) -> None:
    hung = threading.Event()

    def hang(request: Any, context: grpc.ServicerContext) -> Any:
        hung.wait(5)
        return ok(request, context)

    server.behaviours = [hang]
    try:
        with pytest.raises(api_exceptions.DeadlineExceeded):
            call(request(), routing(topic=TOPIC), 0.3, retry())
    finally:
        hung.set()
