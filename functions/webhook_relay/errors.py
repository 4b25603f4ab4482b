"""The relay's typed errors: each one is a documented HTTP answer.

Raising one of these anywhere between reading the request and publishing the event ends the
request with its status; anything else is a bug, and the HTTP layer still answers it as 503
so Gemini retries instead of losing the event.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A bad environment variable, found at start-up. The message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class RelayError(Exception):
    """A request that ends with a documented non-2xx answer. `detail` is safe to return."""

    http_status = 500
    status = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(RelayError):
    """Missing or malformed `webhook-*` headers: the sender has a bug; retrying will not help."""

    http_status = 400
    status = "bad_request"


class Unauthorized(RelayError):
    """Not provably from a holder of a configured secret or key.

    `hint` goes to the log line only (never the answer): what the operator can change.
    """

    http_status = 401
    status = "unauthorized"

    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.hint = hint


class TooLarge(RelayError):
    http_status = 413
    status = "too_large"


class Unavailable(RelayError):
    """A dependency (Firestore, Pub/Sub, the key set) failed or was too slow: retry later."""

    http_status = 503
    status = "unavailable"

    def __init__(self, detail: str, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
