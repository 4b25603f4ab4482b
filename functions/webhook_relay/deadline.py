"""One time budget per request, shared by every call it makes.

Gemini treats a slow answer as a failure and retries; the contract answers every request
within 10 s. Each Firestore or Pub/Sub call gets what is left of the budget (capped), so a
hung dependency becomes a 503 in time instead of a gateway timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import Unavailable

REQUEST_BUDGET_SECONDS = 8.0
_MINIMUM_CALL_SECONDS = 0.05


class Deadline:
    def __init__(
        self, seconds: float = REQUEST_BUDGET_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return self._end - self._clock()

    def timeout(self, cap: float) -> float:
        """Seconds the next call may take; `Unavailable` when the budget is spent."""
        seconds = min(cap, self.remaining())
        if seconds < _MINIMUM_CALL_SECONDS:
            raise Unavailable("request deadline reached")
        return seconds
