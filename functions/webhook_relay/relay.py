"""A verified delivery -> claimed -> normalized -> published -> recorded. No HTTP here.

The invariant: a 2xx only after Pub/Sub confirmed the publish; on any failure before that,
the claim is released and the answer is 503, so Gemini's retry publishes the event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .claim import Claimed, Claims, Duplicate, InFlight
from .deadline import Deadline
from .normalize import normalize
from .publish import Publisher
from .routing import Routes
from .verify import Delivery

log = logging.getLogger(__name__)
RELEASE_BUDGET_SECONDS = 1.5


@dataclass(frozen=True)
class Outcome:
    status: str  # accepted | quarantined | duplicate | in_flight
    http_status: int
    event_type: str
    topic: str | None = None
    message_id: str | None = None
    retry_after: int | None = None
    attempts: int | None = None


class Relay:
    def __init__(self, claims: Claims, publisher: Publisher, routes: Routes) -> None:
        self._claims = claims
        self._publisher = publisher
        self._routes = routes

    def deliver(self, delivery: Delivery, scheme: str, deadline: Deadline) -> Outcome:
        event = normalize(delivery.webhook_id, delivery.timestamp, delivery.body, scheme)
        claim = self._claims.claim(delivery.webhook_id, event.type, event.subject, deadline)
        if isinstance(claim, Duplicate):
            return Outcome("duplicate", 200, event.type)
        if isinstance(claim, InFlight):
            return Outcome("in_flight", 409, event.type, retry_after=claim.retry_after)

        topic = self._routes.unrouted if event.quarantined else self._routes.topic_for(event.type)
        try:
            message_id = self._publisher.publish(topic, event.data(), event.attributes(), deadline)
        except BaseException:
            self._release(claim)
            raise
        try:
            self._claims.mark_published(claim, topic, message_id, deadline)
        except Exception as exc:  # published is published: answer 2xx, the lease decides later
            log.error(
                "event published but its record was not updated (%s); a retry after the "
                "lease may publish it again",
                type(exc).__name__,
                extra={"webhook_id": delivery.webhook_id, "message_id": message_id},
            )
        status = "quarantined" if event.quarantined else "accepted"
        return Outcome(status, 200, event.type, topic, message_id, attempts=claim.attempts)

    def _release(self, claim: Claimed) -> None:
        # A budget of its own, since the request's may be what ran out: an unreleased claim
        # makes Gemini's next retry wait for the lease. 8 s + 1.5 s stays inside 10 s.
        try:
            self._claims.release(claim, Deadline(RELEASE_BUDGET_SECONDS))
        except Exception as exc:
            log.warning(
                "claim not released (%s); it frees itself when its lease ends",
                type(exc).__name__,
                extra={"webhook_id": claim.webhook_id},
            )
