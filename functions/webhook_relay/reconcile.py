"""The safety net's run: publish the terminal events Gemini never delivered, once per job.

One run: check the relay's webhooks (a disabled one is an ERROR line, optionally re-enabled),
list batch jobs within the look-back (newest first, until a page is wholly older), then check
the unfinished jobs of the watch list, the least recently checked first; for each job terminal
longer than the grace period whose event was never published, claim its job record (jobs.py)
and publish the event a delivery would have produced, while the claim's lease covers it.
Each step has its own share of the run's budget. Everything the run cannot do now (an API
error, a 429, a claim held by a live delivery, the budget) is logged and left for the next
run; nothing here raises out of `run`.

No google-genai here: the API is behind `GeminiJobs` (reconcile_gemini.py implements it).
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import pairwise
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as api_exceptions

from .deadline import Deadline
from .errors import RelayError
from .jobs import (
    CHECKED_FIELD,
    CLAIMED,
    PUBLISHED,
    FirestoreJobs,
    JobClaimed,
    JobKey,
    JobPublished,
    Watched,
    job_id_of,
    key_for_name,
)
from .logs import emit
from .normalize import Event, normalize
from .publish import Publisher
from .routing import Routes

RUN_BUDGET_SECONDS = 240.0  # the function's timeout must leave room above this (infra/)
# The run's budget in shares: the webhook check takes at most its own, the batch listing half
# of what is left, the watch list the rest; a step that runs out (or is rate-limited) stops
# alone, the next one still runs.
WEBHOOKS_SECONDS = 30.0
BATCH_SHARE = 0.5
# One job's publish and record write, sized to the lease floor (config.MIN_CLAIM_LEASE_SECONDS,
# 15 s): the lease counts from the claim's own transaction, so a claim must leave at least
# PUBLISH_SECONDS + RECORD_SECONDS + LEASE_MARGIN_SECONDS of it (clocks of instances differ a
# little), or it is given back unused. The wait for the claim itself is not in the lease: on a
# contended record (two runs at once, a delivery) Firestore holds a transaction ~2 s per
# conflict, so the run waits longer than a request would.
CLAIM_SECONDS = 8.0
PUBLISH_SECONDS = 4.0
RECORD_SECONDS = 4.0
LEASE_MARGIN_SECONDS = 2.0
# The record write is retried past the lease too (a record still ours is still worth writing:
# else a late delivery publishes again), in attempts of RECORD_ATTEMPT_SECONDS.
RECORD_RETRY_SECONDS = 12.0
RECORD_ATTEMPT_SECONDS = 2.0
API_CALL_SECONDS = 10.0  # one Gemini API call (reconcile_gemini.py)
JOB_SECONDS = API_CALL_SECONDS + CLAIM_SECONDS + PUBLISH_SECONDS + RECORD_RETRY_SECONDS
STORE_CALL_SECONDS = 5.0  # per Firestore call of a run (a request's: 2.5 s, claim.py)
WATCH_PER_RUN = 300  # unfinished jobs checked per run, the least recently checked first
BACKFILL_PAGE = 500  # unfinished records scanned per run for a missing `checked_at`
BACKFILL_SECONDS = 20.0  # its read, and a write for each record missing one (old records)
MAX_BATCH_PAGES = 100  # batch listing pages per run (100 batches a page)
SIGNATURE = "reconciled"
FAILED_STATES = frozenset({"failed"})
RETRY_PAUSE = 0.2
T = TypeVar("T")


@dataclass(frozen=True)
class JobView:
    """A job as the API returns it, reduced to what its terminal event needs."""

    kind: str  # batch | interaction | video
    name: str  # the resource name as the API returns it
    state: str  # lower case: succeeded, failed, incomplete, generated, running, ...
    terminal: bool
    ended_at: datetime | None = None  # the job's own end time, where the API gives one
    created_at: datetime | None = None
    output_uri: str | None = None
    file_name: str | None = None
    error: dict[str, Any] | None = None
    user_metadata: Any = None

    @property
    def event_type(self) -> str:
        return f"{self.kind}.{self.state}"


@dataclass(frozen=True)
class WebhookView:
    id: str
    name: str | None
    uri: str
    state: str  # enabled | disabled | disabled_due_to_failed_deliveries


class ApiFailure(Exception):
    """The Gemini API failed or refused a call; `detail` is safe to log."""

    def __init__(self, detail: str, rate_limited: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.rate_limited = rate_limited


class GeminiJobs(Protocol):
    def webhooks(self, deadline: Deadline) -> list[WebhookView]:
        """Every webhook, in a bounded number of pages within `deadline`; `ApiFailure` if
        the list did not end (a partial list would report a registered webhook missing)."""

    def enable_webhook(self, webhook: WebhookView) -> None: ...

    def batch_pages(self) -> Iterator[list[JobView]]:
        """Every batch job, a page at a time (newest first, as the API lists them); raises
        `ApiFailure` mid-way."""

    def get(self, kind: str, name: str) -> JobView: ...


@dataclass(frozen=True)
class Policy:
    public_url: str | None
    grace: timedelta
    lookback: timedelta
    reenable_webhooks: bool
    budget_seconds: float = RUN_BUDGET_SECONDS
    # Delivery records to consult for a job with no job record: published before job records
    # existed (the first runs after an upgrade), its event must not be published again.
    deliveries_collection: str | None = None
    watch_per_run: int = WATCH_PER_RUN
    max_batch_pages: int = MAX_BATCH_PAGES


@dataclass
class Summary:
    """One run, as its summary line and its HTTP answer report it."""

    checked: int = 0  # jobs whose state the run read: checked_batches + checked_watched
    checked_batches: int = 0
    checked_watched: int = 0
    reconciled: int = 0
    already_delivered: int = 0
    watching: int = 0  # unfinished (watched or claimed) records the run read
    errors: int = 0
    in_flight: int = 0  # claimed by a live delivery or run: theirs to publish
    pending: int = 0  # terminal, still within the grace period
    backfilled: int = 0  # unfinished records given the `checked_at` they lacked
    # The `checked_at` of the least recently checked unfinished job this run read but left
    # for the next (budget, rate limit, or more than `watch_per_run`); None: none was left.
    oldest_unchecked: str | None = None
    stopped_at_budget: bool = False
    rate_limited: bool = False
    reached_gemini: bool = False
    reached_firestore: bool = False
    detail: str | None = None
    events: list[dict[str, str]] = field(default_factory=list)
    step: str = field(default="", compare=False)  # the step running, for progress reports

    @property
    def unavailable(self) -> bool:
        return not (self.reached_gemini or self.reached_firestore)

    def to_json(self) -> dict[str, Any]:
        found = asdict(self)
        del found["step"]
        return found | {"status": self.status}

    @property
    def status(self) -> str:
        if self.unavailable:
            return "unavailable"
        return "stopped_at_budget" if self.stopped_at_budget else "completed"

    def log_fields(self) -> dict[str, Any]:
        """The summary line's fields: the counts, never the per-job list."""
        fields = self.to_json()
        for name in ("events", "reached_gemini", "reached_firestore", "status"):
            fields.pop(name)
        return fields


class _Stop(Exception):
    """The step's share of the budget is spent, or the API rate-limited it: the next step
    runs, and the next run goes on where this one stopped."""


class Reconciler:
    def __init__(
        self,
        gemini: GeminiJobs,
        jobs: FirestoreJobs,
        publisher: Publisher,
        routes: Routes,
        policy: Policy,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gemini = gemini
        self._jobs = jobs
        self._publisher = publisher
        self._routes = routes
        self._policy = policy
        self._clock = clock
        self._monotonic = monotonic

    def run(self, summary: Summary | None = None) -> Summary:
        """One run; `summary` (optional) is filled as the run goes, for progress reports."""
        summary = summary if summary is not None else Summary()
        run = _Run(self, summary, Deadline(self._policy.budget_seconds, self._monotonic))
        steps: tuple[tuple[Callable[[], None], Callable[[float], float]], ...] = (
            (run.check_webhooks, lambda left: min(WEBHOOKS_SECONDS, left)),
            (run.batches, lambda left: left * BATCH_SHARE),
            (run.watched, lambda left: left),
        )
        for step, share in steps:
            summary.step = step.__name__
            run.step_budget = Deadline(share(run.budget.remaining()), self._monotonic)
            try:
                step()
            except _Stop:
                continue
            except Exception as exc:  # a bug must not stop the other steps, nor every run
                summary.errors += 1
                emit(
                    "ERROR",
                    f"reconcile step {step.__name__} failed ({type(exc).__name__})",
                    status="reconcile_error",
                    stack_trace=traceback.format_exc(),
                )
        summary.step = "done"
        summary.checked = summary.checked_batches + summary.checked_watched
        severity = "ERROR" if summary.unavailable else "WARNING" if summary.errors else "INFO"
        emit(severity, "reconcile run", status=f"run_{summary.status}", **summary.log_fields())
        return summary


class _Run:
    def __init__(self, owner: Reconciler, summary: Summary, budget: Deadline) -> None:
        self._r = owner
        self._summary = summary
        self.budget = budget
        self.step_budget = budget
        self._seen: set[JobKey] = set()
        self._now = self._wall()

    # --- webhook health ------------------------------------------------------------------------

    def check_webhooks(self) -> None:
        url = self._r._policy.public_url
        if not url:
            emit("INFO", "webhook health not checked: RELAY_PUBLIC_URL is unset", status="skipped")
            return
        ok, hooks = self._api(partial(self._r._gemini.webhooks, self.step_budget))
        if not ok or hooks is None:
            return
        mine = [hook for hook in hooks if hook.uri == url]
        if not mine:
            emit("WARNING", f"no Gemini webhook is registered for {url}", status="webhook_missing")
        for hook in mine:
            name = hook.name or hook.id
            if hook.state == "disabled_due_to_failed_deliveries":
                emit(
                    "ERROR",
                    f"Gemini disabled webhook {name} after failed deliveries",
                    status="webhook_disabled",
                    webhook=name,
                    url=url,
                    webhook_state=hook.state,
                )
                if self._r._policy.reenable_webhooks:
                    ok, _ = self._api(partial(self._r._gemini.enable_webhook, hook))
                    if ok:
                        emit(
                            "WARNING",
                            f"re-enabled webhook {name}",
                            status="webhook_reenabled",
                            webhook=name,
                            url=url,
                        )
            elif hook.state == "disabled":
                emit(
                    "INFO",
                    f"webhook {name} is disabled (by a person); left alone",
                    status="webhook_disabled_by_user",
                    webhook=name,
                    url=url,
                )

    # --- jobs ------------------------------------------------------------------------------------

    def batches(self) -> None:
        pages = self._r._gemini.batch_pages()
        oldest = self._now - self._r._policy.lookback
        newest_first = True  # what the listing has shown so far: the early stop relies on it
        last: datetime | None = None
        for _ in range(self._r._policy.max_batch_pages):
            self._check_budget()
            ok, page = self._api(lambda: next(pages, None))
            # An API error (logged; the next run lists again), or the last page was done.
            if not ok or page is None:
                return
            created = [_created(b, self._now) for b in page]
            sequence = ([last] if last else []) + created
            newest_first = newest_first and all(a >= b for a, b in pairwise(sequence))
            last = created[-1] if created else last
            recent = [b for b, at in zip(page, created, strict=True) if at >= oldest]
            self._summary.checked_batches += len(recent)
            keys = {key: b for b in recent if b.terminal and (key := _key(b.name)) is not None}
            records = self._store(
                partial(self._r._jobs.records, keys, Deadline(STORE_CALL_SECONDS))
            )
            if records is None:
                return
            for key, job in keys.items():
                self._check_budget()
                self._seen.add(key)
                self._consider(key, job, records.get(key))
            if page and not recent and newest_first:
                return  # a page wholly older than the look-back: the rest is older still
        self._summary.errors += 1
        emit(
            "WARNING",
            f"batch listing stopped after {self._r._policy.max_batch_pages} pages; older "
            "batches were not checked (shorten RELAY_RECONCILE_LOOKBACK_HOURS)",
            status="batch_pages_capped",
        )

    def watched(self) -> None:
        backfilled = self._store(
            partial(self._r._jobs.backfill_checked, BACKFILL_PAGE, Deadline(BACKFILL_SECONDS))
        )
        self._summary.backfilled = backfilled or 0
        limit = self._r._policy.watch_per_run
        found = self._store(
            partial(self._r._jobs.unfinished, limit + 1, Deadline(2 * STORE_CALL_SECONDS))
        )
        if found is None:
            return
        left: list[Watched] = list(found)  # one past the limit: the oldest left, if any
        self._summary.watching = min(len(found), limit)
        try:
            for item in found[:limit]:
                self._check_budget()
                self._check_watched(item)
                left.pop(0)
        finally:
            if left:
                checked = left[0].record.get(CHECKED_FIELD)
                stamp = checked.isoformat() if isinstance(checked, datetime) else None
                self._summary.oldest_unchecked = stamp

    def _check_watched(self, item: Watched) -> None:
        record = item.record
        name, kind = record.get("name"), record.get("kind")
        if not isinstance(name, str) or not isinstance(kind, str):
            self._checked(item)  # unreadable: kept from the head of the list, left to its TTL
            return
        lease = record.get("lease_until")
        if record.get("state") == CLAIMED and isinstance(lease, datetime) and lease > self._wall():
            self._summary.in_flight += 1  # the claim's holder writes it: not even `checked_at`
            return
        key = JobKey(kind, job_id_of(name))
        if key in self._seen:  # a batch the listing has just checked
            self._checked(item)
            return
        ok, job = self._api(partial(self._r._gemini.get, kind, name))
        self._checked(item)  # an API error too: a job that always fails must not stay first
        if not ok or job is None:
            return
        self._summary.checked_watched += 1
        if job.terminal:
            self._consider(key, job, record)

    def _checked(self, item: Watched) -> None:
        # False (the record changed since it was read) is fine: whoever wrote it is on it.
        self._store(partial(self._r._jobs.checked, item, Deadline(STORE_CALL_SECONDS)))

    def _consider(self, key: JobKey, job: JobView, record: dict[str, Any] | None) -> None:
        summary = self._summary
        if record is not None and record.get("state") == PUBLISHED:
            summary.already_delivered += 1
            return
        ended = job.ended_at or _moment((record or {}).get("terminal_seen_at"))
        if ended is None:
            ended = self._store(
                lambda: self._r._jobs.note_terminal(key, job.name, Deadline(STORE_CALL_SECONDS))
            )
            if ended is None:
                return
        if self._now - ended < self._r._policy.grace:
            summary.pending += 1
            return
        deliveries = self._r._policy.deliveries_collection
        if record is None and deliveries:
            adopted = self._store(
                partial(
                    self._r._jobs.adopt_delivery,
                    key,
                    job.name,
                    deliveries,
                    Deadline(STORE_CALL_SECONDS),
                )
            )
            if adopted is None:
                return
            if adopted:
                summary.already_delivered += 1
                return
        owner = "reconcile:" + uuid.uuid4().hex  # this attempt's: a claim of ours is recognised
        claim = self._store(
            lambda: self._r._jobs.claim(
                key, owner, job.event_type, job.name, Deadline(CLAIM_SECONDS)
            )
        )
        if claim is None:
            return
        if isinstance(claim, JobPublished):
            summary.already_delivered += 1
            return
        if not isinstance(claim, JobClaimed):
            summary.in_flight += 1
            return
        left = (claim.lease_until - self._wall()).total_seconds()
        if left < PUBLISH_SECONDS + RECORD_SECONDS + LEASE_MARGIN_SECONDS:
            # A delivery may take the claim over before the publish and its record are done.
            summary.errors += 1
            emit(
                "WARNING",
                f"job claim given back unused: its lease ({left:.1f} s left) no longer covers "
                "a publish and its record; the next run checks the job again",
                status="lease_short",
                job=job.name,
            )
            self._release(claim, job)
            return
        self._publish(claim, job, ended)

    def _publish(self, claim: JobClaimed, job: JobView, ended: datetime) -> None:
        event = synthesize(job, ended)
        topic = self._r._routes.topic_for(event.type)
        try:
            message_id = self._r._publisher.publish(
                topic, event.data(), event.attributes(), Deadline(PUBLISH_SECONDS)
            )
        except Exception as exc:
            self._summary.errors += 1
            emit(
                "ERROR",
                f"reconciled event not published: {_why(exc)}",
                status="publish_failed",
                job=job.name,
                event_type=event.type,
                topic=topic,
            )
            self._release(claim, job)
            return
        self._record(claim, job, topic, message_id)
        self._summary.reconciled += 1
        self._summary.events.append(
            {"job": job.name, "type": event.type, "id": event.cloudevent["id"]}
        )
        emit(
            "WARNING",
            f"missed event reconciled: {event.type} for {job.name}",
            status="missed_event_reconciled",
            job=job.name,
            kind=job.kind,
            event_type=event.type,
            topic=topic,
            message_id=message_id,
            terminal_at=ended.isoformat(),
        )

    def _record(self, claim: JobClaimed, job: JobView, topic: str, message_id: str) -> None:
        """Mark the job published, retried (a Firestore blip, a slow answer) for up to
        RECORD_RETRY_SECONDS: a record left `claimed` lets a late delivery publish again."""
        retries = Deadline(RECORD_RETRY_SECONDS)
        why = "no attempt"
        while (seconds := min(RECORD_ATTEMPT_SECONDS, retries.remaining())) > RETRY_PAUSE:
            try:
                self._r._jobs.mark_published(claim, topic, message_id, Deadline(seconds))
                return
            except api_exceptions.FailedPrecondition:
                why = "its claim was taken over (its lease ran out)"
                break
            except Exception as exc:
                why = _why(exc)
                time.sleep(RETRY_PAUSE)
        self._summary.errors += 1
        emit(
            "ERROR",
            f"reconciled event published but its job record was not updated ({why}); "
            f"a late delivery of {job.name} may publish it again",
            status="job_record_not_updated",
            job=job.name,
            message_id=message_id,
        )

    def _release(self, claim: JobClaimed, job: JobView) -> None:
        try:
            self._r._jobs.release(claim, Deadline(RECORD_SECONDS))
        except Exception as error:  # the lease frees it
            emit("WARNING", f"job claim not released: {_why(error)}", job=job.name)

    # --- plumbing -------------------------------------------------------------------------------

    def _wall(self) -> datetime:
        return datetime.fromtimestamp(self._r._clock(), UTC)

    def _check_budget(self) -> None:
        if min(self.step_budget.remaining(), self.budget.remaining()) < JOB_SECONDS:
            self._summary.stopped_at_budget = True
            raise _Stop

    def _api(self, call: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, the answer), or (False, None) after an API failure (logged and counted)."""
        try:
            answer = call()
        except ApiFailure as failure:
            self._summary.errors += 1
            emit(
                "WARNING",
                f"Gemini API call failed: {failure.detail}",
                status="gemini_api_error",
                rate_limited=failure.rate_limited,
            )
            if failure.rate_limited:  # hammering on would only extend the limit
                self._summary.rate_limited = True
                raise _Stop from None
            return False, None
        self._summary.reached_gemini = True
        return True, answer

    def _store(self, call: Callable[[], Any]) -> Any:
        try:
            answer = call()
        except RelayError as error:  # Unavailable, from jobs.py
            self._summary.errors += 1
            emit("ERROR", f"Firestore call failed: {error.detail}", status="firestore_error")
            return None
        self._summary.reached_firestore = True
        return answer


def synthesize(job: JobView, ended: datetime) -> Event:
    """The CloudEvent a delivery of this job's terminal event would have produced: the same
    envelope Gemini sends, read by the same `normalize`, signed `reconciled`."""
    data: dict[str, Any] = {"id": job.name}
    if job.output_uri:
        data["output_file_uri"] = job.output_uri
    if job.file_name:
        data["file_name"] = job.file_name
    error = job.error
    if error is None and job.state in FAILED_STATES:  # never null for a failed job
        error = {"code": job.state.upper(), "message": f"{job.kind} {job.name} {job.state}"}
    if error is not None:
        data["error_code"] = error.get("code")
        data["error_message"] = error.get("message")
    if job.user_metadata is not None:
        data["user_metadata"] = job.user_metadata
    stamp = ended.astimezone(UTC)
    envelope = {
        "type": job.event_type,
        "version": "v1",
        "timestamp": stamp.isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    body = json.dumps(envelope, separators=(",", ":")).encode()
    event_id = f"reconciled:{job.event_type}:{job.name}"
    return normalize(event_id, int(stamp.timestamp()), body, SIGNATURE)


def _key(name: str) -> JobKey | None:
    try:
        return key_for_name(name)
    except ValueError:  # a name of a shape no job has: nothing to claim it by
        return None


def _created(job: JobView, now: datetime) -> datetime:
    return job.created_at or job.ended_at or now


def _moment(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _why(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, RelayError) else type(exc).__name__
