"""A verified delivery -> claimed -> normalized -> published -> recorded. No HTTP here.

The invariant: a 2xx only after Pub/Sub confirmed the publish; on any failure before that,
the claim is released and the answer is 503, so Gemini's retry publishes the event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions

from .claim import Claimed, Claims, Duplicate, InFlight
from .deadline import Deadline
from .jobs import JobInFlight, JobPublished, TerminalEvents
from .normalize import normalize
from .publish import Publisher
from .routing import Routes
from .verify import Delivery

log = logging.getLogger(__name__)
# The records' last writes (release after a failure, or `published` after a publish: the
# delivery's and, for a terminal event, the job's) share a budget of their own, since the
# request's may be what ran out: 8 s + 1.5 s stays inside 10 s.
RECORD_BUDGET_SECONDS = 1.5


@dataclass(frozen=True)
class Outcome:
    status: str  # accepted | quarantined | duplicate | in_flight | ping
    http_status: int
    event_type: str
    topic: str | None = None
    message_id: str | None = None
    retry_after: int | None = None
    attempts: int | None = None


class Relay:
    def __init__(
        self,
        claims: Claims,
        publisher: Publisher,
        routes: Routes,
        jobs: TerminalEvents | None = None,
    ) -> None:
        self._claims = claims
        self._publisher = publisher
        self._routes = routes
        self._jobs = jobs  # one terminal event per job, shared with `reconcile` (jobs.py)

    def deliver(self, delivery: Delivery, scheme: str, deadline: Deadline) -> Outcome:
        event = normalize(delivery.webhook_id, delivery.timestamp, delivery.body, scheme)
        claim = self._claims.claim(delivery.webhook_id, event.type, event.subject, deadline)
        if isinstance(claim, Duplicate):
            return Outcome("duplicate", 200, event.type)
        if isinstance(claim, InFlight):
            return Outcome("in_flight", 409, event.type, retry_after=claim.retry_after)
        if event.ping:  # recorded, so `register` can see it arrived; there is nothing to publish
            self._record(claim, None, None, Deadline(RECORD_BUDGET_SECONDS))
            return Outcome("ping", 200, event.type, attempts=claim.attempts)
        try:
            job = self._jobs.claim(event, delivery.webhook_id, deadline) if self._jobs else None
        except BaseException:
            self._release(claim, Deadline(RECORD_BUDGET_SECONDS))
            raise
        if isinstance(job, JobPublished):  # the job's event is out (reconciled, or delivered)
            self._record(claim, job.topic, job.message_id, Deadline(RECORD_BUDGET_SECONDS))
            return Outcome("duplicate", 200, event.type, attempts=claim.attempts)
        if isinstance(job, JobInFlight):
            self._release(claim, Deadline(RECORD_BUDGET_SECONDS))
            return Outcome("in_flight", 409, event.type, retry_after=job.retry_after)

        topic = self._routes.unrouted if event.quarantined else self._routes.topic_for(event.type)
        try:
            message_id = self._publisher.publish(topic, event.data(), event.attributes(), deadline)
        except BaseException:
            after = Deadline(RECORD_BUDGET_SECONDS)
            self._release(claim, after)
            if self._jobs:
                self._jobs.release(job, after)
            raise
        after = Deadline(RECORD_BUDGET_SECONDS)
        if self._jobs:
            self._jobs.published(job, topic, message_id, after)
        self._record(claim, topic, message_id, after)
        status = "quarantined" if event.quarantined else "accepted"
        return Outcome(status, 200, event.type, topic, message_id, attempts=claim.attempts)

    def _record(
        self, claim: Claimed, topic: str | None, message_id: str | None, deadline: Deadline
    ) -> None:
        # Published is published: the answer is 2xx whatever happens to the record.
        context = {"webhook_id": claim.webhook_id, "message_id": message_id}
        try:
            self._claims.mark_published(claim, topic, message_id, deadline)
        except api_exceptions.FailedPrecondition:
            log.error(
                "claim lost while publishing: its lease ran out and another request took it "
                "over, so this event may be published twice",
                extra={**context, "status": "published_twice"},
            )
        except Exception as exc:
            log.error(
                "event published but its record was not updated (%s); a retry after the "
                "lease may publish it again",
                type(exc).__name__,
                extra=context,
            )

    def _release(self, claim: Claimed, deadline: Deadline) -> None:
        # An unreleased claim makes Gemini's next retry wait for the lease.
        try:
            self._claims.release(claim, deadline)
        except Exception as exc:
            log.warning(
                "claim not released (%s); it frees itself when its lease ends",
                type(exc).__name__,
                extra={"webhook_id": claim.webhook_id},
            )
