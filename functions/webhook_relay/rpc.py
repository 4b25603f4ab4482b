"""One unary gRPC call on a client's own channel, with raw protobuf messages.

The generated clients wrap each call in layers a delivery does not need: a proto-plus request
and response, retry and timeout decorators, error remapping, and a logging interceptor on the
channel. Those layers were about a sixth of the served worker's CPU per delivery (py-spy,
bench/results.md, row 3). `Unary` makes the same request on the same channel (same
credentials, endpoint or emulator, channel options), with the metadata the generated call
sends (routing header, `x-goog-api-client`), the caller's `Retry`, a timeout that covers every
attempt, and errors mapped as `google.api_core` maps them (`from_grpc_error`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core.gapic_v1.client_info import ClientInfo
from google.api_core.gapic_v1.routing_header import to_grpc_metadata
from google.api_core.retry import Retry

Metadata = tuple[tuple[str, str], ...]


class Unary:
    def __init__(
        self,
        channel: grpc.Channel,
        method: str,
        request_type: Any,
        response_type: Any,
        client_info: ClientInfo,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`method`: the wire name, `/package.Service/Method`; `metadata`: sent on every call
        besides `x-goog-api-client` and each call's routing header."""
        self._call: Callable[..., Any] = channel.unary_unary(
            method,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        self._metadata: Metadata = (*metadata, client_info.to_grpc_metadata())  # type: ignore[no-untyped-call]

    def __call__(self, request: Any, routing: Metadata, timeout: float, retry: Retry | None) -> Any:
        """The response; a `google.api_core` error once `retry` (if any) gives up. `timeout`
        bounds all attempts together, as the generated call's `TimeToDeadlineTimeout` does."""
        metadata = self._metadata + routing
        end = time.monotonic() + timeout

        def attempt() -> Any:
            left = end - time.monotonic()
            if left <= 0:
                raise api_exceptions.DeadlineExceeded(  # type: ignore[no-untyped-call]
                    "no time left for another attempt"
                )
            try:
                return self._call(request, timeout=left, metadata=metadata)
            except grpc.RpcError as exc:
                raise api_exceptions.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]

        return retry(attempt)() if retry is not None else attempt()


def routing(**params: str) -> Metadata:
    """The routing header (`x-goog-request-params`) the generated call adds for `params`."""
    return (to_grpc_metadata(tuple(params.items())),)  # type: ignore[no-untyped-call]
