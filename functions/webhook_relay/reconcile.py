"""The safety net's run: publish the terminal events Gemini never delivered, once per job.

One run: check the relay's webhooks (a disabled one is an ERROR line, optionally re-enabled),
list batch jobs within the lookback, get every watched interaction and video operation, and for
each job terminal longer than the grace period whose event was never published, claim its job
record (jobs.py) and publish the event a delivery would have produced. Everything the run cannot
do now (an API error, a 429, a claim held by a live delivery, the time budget) is logged and
left for the next run; nothing here raises out of `run`.

No google-genai here: the API is behind `GeminiJobs` (reconcile_gemini.py implements it).
"""

from __future__ import annotations

import json
import secrets
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

from .deadline import Deadline
from .errors import RelayError
from .jobs import PUBLISHED, FirestoreJobs, JobClaimed, JobKey, JobPublished, key_for_name
from .logs import emit
from .normalize import Event, normalize
from .publish import Publisher
from .routing import Routes

RUN_BUDGET_SECONDS = 240.0  # the function's timeout must leave room above this (infra/)
JOB_SECONDS = 20.0  # claim + publish + record for one job
STORE_CALL_SECONDS = 5.0  # per Firestore call of a run (a request's: 2.5 s, claim.py)
WATCH_LIMIT = 1000  # watched jobs read per run; the rest wait for the next one
SIGNATURE = "reconciled"
FAILED_STATES = frozenset({"failed"})
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
    def webhooks(self) -> list[WebhookView]: ...

    def enable_webhook(self, webhook: WebhookView) -> None: ...

    def batch_pages(self) -> Iterator[list[JobView]]:
        """Every batch job, a page at a time; raises `ApiFailure` mid-way."""

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


@dataclass
class Summary:
    checked: int = 0
    reconciled: int = 0
    already_delivered: int = 0
    watching: int = 0
    errors: int = 0
    in_flight: int = 0  # claimed by a live delivery or run: theirs to publish
    pending: int = 0  # terminal, still within the grace period
    stopped_at_budget: bool = False
    reached_gemini: bool = False
    reached_firestore: bool = False
    events: list[dict[str, str]] = field(default_factory=list)

    @property
    def unavailable(self) -> bool:
        return not (self.reached_gemini or self.reached_firestore)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"status": self.status}

    @property
    def status(self) -> str:
        if self.unavailable:
            return "unavailable"
        return "stopped_at_budget" if self.stopped_at_budget else "completed"


class _Stop(Exception):
    """The time budget is spent, or the API rate-limited us: the next run goes on."""


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

    def run(self) -> Summary:
        summary = Summary()
        run = _Run(self, summary, Deadline(self._policy.budget_seconds, self._monotonic))
        for step in (run.check_webhooks, run.batches, run.watched):
            try:
                step()
            except _Stop:
                break
            except Exception as exc:  # a bug must not stop the other steps, nor every run
                summary.errors += 1
                emit(
                    "ERROR",
                    f"reconcile step {step.__name__} failed ({type(exc).__name__})",
                    status="reconcile_error",
                    stack_trace=traceback.format_exc(),
                )
        severity = "ERROR" if summary.unavailable else "WARNING" if summary.errors else "INFO"
        emit(
            severity,
            "reconcile run",
            status=f"run_{summary.status}",
            checked=summary.checked,
            reconciled=summary.reconciled,
            already_delivered=summary.already_delivered,
            watching=summary.watching,
            errors=summary.errors,
            in_flight=summary.in_flight,
            pending=summary.pending,
        )
        return summary


class _Run:
    def __init__(self, owner: Reconciler, summary: Summary, budget: Deadline) -> None:
        self._r = owner
        self._summary = summary
        self._budget = budget
        self._owner = "reconcile:" + secrets.token_hex(8)  # this run, as a job record's owner
        self._seen: set[JobKey] = set()
        self._now = datetime.fromtimestamp(owner._clock(), UTC)

    # --- webhook health ------------------------------------------------------------------------

    def check_webhooks(self) -> None:
        url = self._r._policy.public_url
        if not url:
            emit("INFO", "webhook health not checked: RELAY_PUBLIC_URL is unset", status="skipped")
            return
        ok, hooks = self._api(self._r._gemini.webhooks)
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
        while True:
            self._check_budget()
            ok, page = self._api(lambda: next(pages, None))
            # An API error (logged; the next run lists again), or the last page was done.
            if not ok or page is None:
                return
            recent = [b for b in page if (b.created_at or b.ended_at or self._now) >= oldest]
            self._summary.checked += len(recent)
            keys = {key: b for b in recent if b.terminal and (key := _key(b.name)) is not None}
            records = self._store(partial(self._r._jobs.records, keys, Deadline(JOB_SECONDS)))
            if records is None:
                return
            for key, job in keys.items():
                self._check_budget()
                self._seen.add(key)
                self._consider(key, job, records.get(key))

    def watched(self) -> None:
        found = self._store(lambda: self._r._jobs.unfinished(WATCH_LIMIT, Deadline(JOB_SECONDS)))
        if found is None:
            return
        self._summary.watching = len(found)
        for record in found:
            self._check_budget()
            name, kind = record.get("name"), record.get("kind")
            if not isinstance(name, str) or not isinstance(kind, str):
                continue
            key = JobKey(kind, str(record.get("job_id")))
            if key in self._seen:
                continue
            ok, job = self._api(partial(self._r._gemini.get, kind, name))
            if not ok or job is None:
                continue
            self._summary.checked += 1
            if job.terminal:
                self._consider(key, job, record)

    def _consider(self, key: JobKey, job: JobView, record: dict[str, Any] | None) -> None:
        summary = self._summary
        if record is not None and record.get("state") == PUBLISHED:
            summary.already_delivered += 1
            return
        ended = job.ended_at or _moment((record or {}).get("terminal_seen_at"))
        if ended is None:
            ended = self._store(
                lambda: self._r._jobs.note_terminal(key, job.name, Deadline(JOB_SECONDS))
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
                    self._r._jobs.adopt_delivery, key, job.name, deliveries, Deadline(JOB_SECONDS)
                )
            )
            if adopted is None:
                return
            if adopted:
                summary.already_delivered += 1
                return
        deadline = Deadline(JOB_SECONDS)
        claim = self._store(
            lambda: self._r._jobs.claim(key, self._owner, job.event_type, job.name, deadline)
        )
        if claim is None:
            return
        if isinstance(claim, JobPublished):
            summary.already_delivered += 1
            return
        if not isinstance(claim, JobClaimed):
            summary.in_flight += 1
            return
        self._publish(claim, job, ended, deadline)

    def _publish(
        self, claim: JobClaimed, job: JobView, ended: datetime, deadline: Deadline
    ) -> None:
        event = synthesize(job, ended)
        topic = self._r._routes.topic_for(event.type)
        try:
            message_id = self._r._publisher.publish(
                topic, event.data(), event.attributes(), deadline
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
            try:
                self._r._jobs.release(claim, Deadline(JOB_SECONDS / 4))
            except Exception as release_error:  # the lease frees it
                emit("WARNING", f"job claim not released: {_why(release_error)}", job=job.name)
            return
        try:
            self._r._jobs.mark_published(claim, topic, message_id, Deadline(JOB_SECONDS / 2))
        except Exception as exc:  # published is published; its lease decides the rest
            self._summary.errors += 1
            emit(
                "ERROR",
                f"reconciled event published but its job record was not updated: {_why(exc)}",
                status="firestore_error",
                job=job.name,
                message_id=message_id,
            )
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

    # --- plumbing -------------------------------------------------------------------------------

    def _check_budget(self) -> None:
        if self._budget.remaining() < JOB_SECONDS:
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


def _moment(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _why(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, RelayError) else type(exc).__name__
