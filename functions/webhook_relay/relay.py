"""A verified delivery -> claimed -> normalized -> published -> recorded. No HTTP here.

The invariant: a 2xx only after Pub/Sub confirmed the publish; on any failure before that,
the claim is released and the answer is 503, so Gemini's retry publishes the event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.api_core import exceptions as api_exceptions

from .claim import Claimed, Claims, Companion, Duplicate, InFlight, new_owner
from .deadline import Deadline
from .jobs import JobClaimed, JobClaimResult, JobGate, JobInFlight, JobPublished, key_for_event
from .normalize import normalize
from .publish import Publisher
from .routing import Routes
from .trace import ATTRIBUTE
from .verify import Delivery

log = logging.getLogger(__name__)
# The records' last writes (release after a failure, or `published` after a publish: the
# delivery's and, for a terminal event, the job's, in one commit) share a budget of their
# own, since the request's may be what ran out: 8 s + 1.5 s stays inside 10 s, and inside
# the shortest lease (15 s) a claim can hold, so no lease ends before its publish is recorded.
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
        jobs: JobGate | None = None,
    ) -> None:
        self._claims = claims
        self._publisher = publisher
        self._routes = routes
        self._jobs = jobs  # one terminal event per job, shared with `reconcile` (jobs.py)

    def deliver(
        self, delivery: Delivery, scheme: str, deadline: Deadline, traceparent: str | None = None
    ) -> Outcome:
        """`traceparent`: the request's W3C trace context (trace.py), carried on the message
        so the subscriber logs in the same trace."""
        event = normalize(delivery.webhook_id, delivery.timestamp, delivery.body, scheme)
        owner = new_owner()  # this request's: a retry of the same delivery is another owner
        key = key_for_event(event) if self._jobs else None
        companion, job_lease = None, None
        if self._jobs and key:
            companion, job_lease = self._jobs.new_claim(
                key, owner, delivery.webhook_id, event.type, event.subject or ""
            )
        claim = self._claims.claim(
            delivery.webhook_id, event.type, event.subject, deadline, owner, companion
        )
        if isinstance(claim, Duplicate):
            return Outcome("duplicate", 200, event.type)
        if isinstance(claim, InFlight):
            return Outcome("in_flight", 409, event.type, retry_after=claim.retry_after)
        if event.ping:  # recorded, so `register` can see it arrived; there is nothing to publish
            self._record(claim, None, None, Deadline(RECORD_BUDGET_SECONDS))
            return Outcome("ping", 200, event.type, attempts=claim.attempts)
        job: JobClaimResult | None = None
        if self._jobs and key:
            if claim.companion_token is not None and job_lease:  # created with the claim
                job = self._jobs.claimed(key, owner, claim.companion_token, job_lease)
            else:  # the job's record existed (watched, reconciled, claimed): a transaction
                try:
                    job = self._jobs.claim(
                        key, owner, event.type, event.subject, deadline, delivery.webhook_id
                    )
                except BaseException:
                    self._release(claim, None, Deadline(RECORD_BUDGET_SECONDS))
                    raise
        if isinstance(job, JobPublished):  # the job's event is out (reconciled, or delivered)
            self._record(claim, job.topic, job.message_id, Deadline(RECORD_BUDGET_SECONDS))
            return Outcome("duplicate", 200, event.type, attempts=claim.attempts)
        if isinstance(job, JobInFlight):
            self._release(claim, None, Deadline(RECORD_BUDGET_SECONDS))
            return Outcome("in_flight", 409, event.type, retry_after=job.retry_after)

        topic = self._routes.unrouted if event.quarantined else self._routes.topic_for(event.type)
        attributes = event.attributes()
        if traceparent:
            attributes[ATTRIBUTE] = traceparent
        try:
            message_id = self._publisher.publish(topic, event.data(), attributes, deadline)
        except BaseException:
            self._release(claim, job, Deadline(RECORD_BUDGET_SECONDS))
            raise
        mark = None
        if self._jobs and isinstance(job, JobClaimed):
            mark = self._jobs.published_write(job, topic, message_id)
        self._record(claim, topic, message_id, Deadline(RECORD_BUDGET_SECONDS), mark)
        status = "quarantined" if event.quarantined else "accepted"
        return Outcome(status, 200, event.type, topic, message_id, attempts=claim.attempts)

    def _record(
        self,
        claim: Claimed,
        topic: str | None,
        message_id: str | None,
        deadline: Deadline,
        job: Companion | None = None,
    ) -> None:
        # Published is published: the answer is 2xx whatever happens to the record.
        context = {"webhook_id": claim.webhook_id, "message_id": message_id}
        try:
            self._claims.mark_published(claim, topic, message_id, deadline, job)
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

    def _release(self, claim: Claimed, job: JobClaimResult | None, deadline: Deadline) -> None:
        # An unreleased claim makes Gemini's next retry wait for the lease.
        try:
            self._claims.release(claim, deadline)
            if self._jobs and isinstance(job, JobClaimed):
                self._jobs.release(job, deadline)
        except Exception as exc:
            log.warning(
                "claim not released (%s); it frees itself when its lease ends",
                type(exc).__name__,
                extra={"webhook_id": claim.webhook_id},
            )
