"""One terminal event per job: a Firestore record per job, claimed by whichever path publishes.

Both the webhook path (a delivered terminal event) and `reconcile` (a job the API shows
terminal whose event never came) claim the job's record in a transaction before publishing:

  absent, `watching`, or `claimed` with a lease past (or by this same owner)
                            take it: `claimed` by this owner with a lease, then publish
  `claimed`, lease live     another path is publishing: the delivery is 409 `in_flight`,
                            the reconciler skips the job until its next run
  `published`               done: the delivery is `duplicate`, the reconciler counts it delivered

A job is its kind and id, the id being the last segment of its resource name, so a delivery's
`batch_123` and the API's `batches/batch_123` are one record. This module is on the receive
path: it imports nothing of `reconcile`'s (no google-genai).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from .claim import firestore_call
from .deadline import Deadline
from .errors import ConfigError, Unavailable
from .normalize import KINDS, NON_TERMINAL, Event

log = logging.getLogger(__name__)
DEFAULT_COLLECTION = "gemini_jobs"
WATCHING, CLAIMED, PUBLISHED = "watching", "claimed", "published"
TTL_FIELD = "expire_at"
CALL_SECONDS = 2.5  # cap per Firestore call, as for delivery records (claim.py)
CLAIM_WORKERS = 40


def collection_from_env(env: Mapping[str, str]) -> str:
    collection = env.get("RELAY_JOBS_COLLECTION", "").strip() or DEFAULT_COLLECTION
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,100}", collection) or collection.startswith("__"):
        raise ConfigError("RELAY_JOBS_COLLECTION", "must be a plain Firestore collection id")
    return collection


@dataclass(frozen=True)
class JobKey:
    kind: str  # batch | interaction | video
    job_id: str

    @property
    def document_id(self) -> str:
        # Ids may hold anything a resource name segment can; document ids cannot.
        return hashlib.sha256(f"{self.kind}:{self.job_id}".encode()).hexdigest()


def job_id_of(name: str) -> str:
    """The last segment of a resource name (`batches/abc` -> `abc`); a bare id is itself."""
    return name.strip().rpartition("/")[2]


def kind_of_name(name: str) -> str:
    """The kind a resource name's shape says; `ValueError` for a shape no job has."""
    parts = name.strip().split("/")
    if all(parts) and not any(c.isspace() for c in name.strip()):
        if len(parts) == 2 and parts[0] == "batches":
            return "batch"
        if len(parts) >= 2 and parts[-2] == "operations":
            return "video"
        if len(parts) == 1 or (len(parts) == 2 and parts[0] == "interactions"):
            return "interaction"
    raise ValueError(
        f"not a job name: {name!r} (expected batches/ID, interactions/ID, a bare interaction "
        "id, or a video operation name …/operations/ID)"
    )


def key_for_name(name: str) -> JobKey:
    return JobKey(kind_of_name(name), job_id_of(name.strip()))


def key_for_event(event: Event) -> JobKey | None:
    """The job whose terminal event this delivery is; None for anything else (non-terminal,
    quarantined, `relay.*`, pings, unknown kinds, no id), which then costs no job-record call."""
    if event.quarantined or event.subject is None:
        return None
    data = event.cloudevent.get("data") or {}
    if data.get("kind") not in KINDS or data.get("terminal") is not True:
        return None
    job_id = job_id_of(event.subject)
    return JobKey(data["kind"], job_id) if job_id else None


@dataclass(frozen=True)
class JobClaimed:
    key: JobKey
    owner: str
    token: Any  # the record's update time after our claim: write only while it is still ours


@dataclass(frozen=True)
class JobPublished:
    key: JobKey
    event_type: str | None
    topic: str | None
    message_id: str | None


@dataclass(frozen=True)
class JobInFlight:
    key: JobKey
    retry_after: int


JobClaimResult = JobClaimed | JobPublished | JobInFlight


class JobGate(Protocol):
    """What the webhook path needs: claim a job's terminal event, then publish or let go."""

    def claim(
        self, key: JobKey, owner: str, event_type: str, name: str | None, deadline: Deadline
    ) -> JobClaimResult:
        """Raises `Unavailable` if the store cannot answer within the deadline."""

    def mark_published(
        self, claim: JobClaimed, topic: str, message_id: str, deadline: Deadline
    ) -> None:
        """Preconditioned on the claim still being ours; may raise (the caller logs it)."""

    def release(self, claim: JobClaimed, deadline: Deadline) -> None:
        """Best effort: the lease ending releases it anyway."""


class FirestoreJobs:
    """Job records in `collection`; every call bounded by the caller's deadline."""

    def __init__(
        self,
        client: Callable[[], firestore.Client],
        collection: str,
        lease_seconds: int,
        ttl_hours: int,
        clock: Callable[[], float] = time.time,
        call_seconds: float = CALL_SECONDS,
    ) -> None:
        self._client = client
        self._collection = collection
        # A request's budget is tight (10 s in all); a scheduled run can afford to wait longer
        # on a slow or contended transaction rather than give up and leave a claim behind.
        self._call_seconds = call_seconds
        self._lease = timedelta(seconds=lease_seconds)
        self._ttl = timedelta(hours=ttl_hours)
        self._clock = clock
        # Transactions take no timeout for begin/commit; a worker thread bounds the wait. Every
        # terminal delivery claims here, so as many workers as an instance serves requests
        # (THREADS, 40 in infra/), or claims would queue behind each other under load.
        self._workers = concurrent.futures.ThreadPoolExecutor(CLAIM_WORKERS, "job-claim")

    # --- both paths --------------------------------------------------------------------------

    def claim(
        self, key: JobKey, owner: str, event_type: str, name: str | None, deadline: Deadline
    ) -> JobClaimResult:
        ref = self._ref(key)

        @firestore.transactional
        def take(transaction: firestore.Transaction) -> JobClaimResult:
            snapshot = ref.get(
                transaction=transaction, timeout=deadline.timeout(self._call_seconds)
            )
            current = snapshot.to_dict() if snapshot.exists else None
            now = self._now()
            found = _decide(key, owner, current, now)
            if found is not None:
                return found
            fields = {
                "kind": key.kind,
                "job_id": key.job_id,
                "state": CLAIMED,
                "owner": owner,
                "lease_until": now + self._lease,
                "event_type": event_type,
                "claimed_at": now,
                TTL_FIELD: now + self._ttl,
            }
            if current is None:
                transaction.create(ref, fields | {"name": name, "first_seen_at": now})
            else:
                if name and not current.get("name"):
                    fields["name"] = name
                transaction.update(ref, fields)
            return JobClaimed(key, owner, None)

        def run() -> JobClaimResult:
            # The library's own transaction: begin and commit wait on a contended lock (a
            # delivery and a run racing) rather than fail; the caller's wait is bounded.
            transaction = self._client().transaction()
            result: JobClaimResult = take(transaction)
            if isinstance(result, JobClaimed):
                written = transaction.write_results or []
                result = JobClaimed(key, owner, written[0].update_time if written else None)
            return result

        return self._bounded(run, deadline)

    def mark_published(
        self, claim: JobClaimed, topic: str, message_id: str, deadline: Deadline
    ) -> None:
        now = self._now()
        fields = {
            "state": PUBLISHED,
            "topic": topic,
            "message_id": message_id,
            "published_at": now,
            TTL_FIELD: now + self._ttl,
        }
        self._write_if_ours(claim, fields, deadline)

    def release(self, claim: JobClaimed, deadline: Deadline) -> None:
        # FailedPrecondition: someone took the claim over since; theirs to release, not ours.
        with contextlib.suppress(api_exceptions.FailedPrecondition):
            self._write_if_ours(claim, {"lease_until": self._now()}, deadline)

    # --- the reconciler and `watch` ---------------------------------------------------------------

    def watch(self, key: JobKey, name: str, deadline: Deadline) -> bool:
        """Add a job to the watch list; False if it already had a record (left as it is)."""
        now = self._now()
        record = {
            "kind": key.kind,
            "job_id": key.job_id,
            "name": name,
            "state": WATCHING,
            "watched_at": now,
            "first_seen_at": now,
            TTL_FIELD: now + self._ttl,
        }
        ref = self._ref(key)
        try:
            self._call(deadline, lambda options: ref.create(record, **options))
        except api_exceptions.AlreadyExists:
            return False
        return True

    def records(self, keys: Iterable[JobKey], deadline: Deadline) -> dict[JobKey, dict[str, Any]]:
        """The existing records of these jobs, in one call."""
        by_id = {key.document_id: key for key in keys}
        if not by_id:
            return {}
        refs = [self._collection_ref().document(doc_id) for doc_id in by_id]
        snapshots = self._call(
            deadline, lambda options: list(self._client().get_all(refs, **options))
        )
        return {
            by_id[snapshot.id]: snapshot.to_dict() or {}
            for snapshot in snapshots
            if snapshot.exists
        }

    def unfinished(self, limit: int, deadline: Deadline) -> list[dict[str, Any]]:
        """Watched jobs whose terminal event is not published yet (a claim may have died)."""
        query = (
            self._collection_ref()
            .where(filter=FieldFilter("state", "in", [WATCHING, CLAIMED]))
            .limit(limit)
        )
        snapshots = self._call(deadline, lambda options: list(query.stream(**options)))
        return [snapshot.to_dict() or {} for snapshot in snapshots]

    def adopt_delivery(self, key: JobKey, name: str, deliveries: str, deadline: Deadline) -> bool:
        """Whether a delivery record (collection `deliveries`) shows this job's terminal event
        published with no job record: deliveries from before job records existed. If so, the
        job's record is written `published`, once, so no run publishes the event again."""
        query = (
            self._client()
            .collection(deliveries)
            .where(filter=FieldFilter("subject", "in", list(dict.fromkeys([name, key.job_id]))))
            .limit(10)
        )
        found = self._call(deadline, lambda options: list(query.stream(**options)))
        records = [snapshot.to_dict() or {} for snapshot in found]
        delivered = [
            r
            for r in records
            if _terminal_of(key, r.get("event_type")) and r.get("state") == PUBLISHED
        ]
        if not delivered:
            return False
        record, now = delivered[0], self._now()
        adopted = {
            "kind": key.kind,
            "job_id": key.job_id,
            "name": name,
            "state": PUBLISHED,
            "event_type": record.get("event_type"),
            "topic": record.get("topic"),
            "message_id": record.get("message_id"),
            "published_at": record.get("published_at") or now,
            "first_seen_at": now,
            TTL_FIELD: now + self._ttl,
        }
        ref = self._ref(key)
        with contextlib.suppress(api_exceptions.AlreadyExists):  # a claim got there first
            self._call(deadline, lambda options: ref.create(adopted, **options))
        return True

    def counts(self, deadline: Deadline) -> dict[str, int]:
        """Job records by state (`watching`, `claimed`, `published`), for `status`."""
        found: dict[str, int] = {}
        for state in (WATCHING, CLAIMED, PUBLISHED):
            counted = self._collection_ref().where(filter=FieldFilter("state", "==", state)).count()
            result = self._call(deadline, partial(_run_aggregation, counted))
            found[state] = int(result[0][0].value)
        return found

    def note_terminal(self, key: JobKey, name: str, deadline: Deadline) -> datetime:
        """When a run first saw the job terminal (for jobs the API gives no end time): kept in
        the record so the grace period counts from it across runs."""
        now = self._now()
        ref = self._ref(key)
        record = {
            "kind": key.kind,
            "job_id": key.job_id,
            "name": name,
            "state": WATCHING,
            "first_seen_at": now,
            "terminal_seen_at": now,
            TTL_FIELD: now + self._ttl,
        }
        try:
            self._call(deadline, lambda options: ref.create(record, **options))
            return now
        except api_exceptions.AlreadyExists:
            pass
        snapshot = self._call(deadline, lambda options: ref.get(**options))
        current = snapshot.to_dict() or {}
        seen = current.get("terminal_seen_at")
        if isinstance(seen, datetime):
            return seen
        # Precondition: a concurrent run writing its own first sight wins, harmlessly.
        option = self._client().write_option(last_update_time=snapshot.update_time)
        with contextlib.suppress(api_exceptions.FailedPrecondition):
            fields = {"terminal_seen_at": now, TTL_FIELD: now + self._ttl}
            self._call(deadline, lambda options: ref.update(fields, option=option, **options))
        return now

    # --- plumbing -------------------------------------------------------------------------------

    def _write_if_ours(self, claim: JobClaimed, fields: dict[str, Any], deadline: Deadline) -> None:
        ref = self._ref(claim.key)
        option = self._client().write_option(last_update_time=claim.token)
        self._call(deadline, lambda options: ref.update(fields, option=option, **options))

    def _bounded(self, run: Callable[[], JobClaimResult], deadline: Deadline) -> JobClaimResult:
        future = self._workers.submit(run)
        try:
            return future.result(timeout=deadline.timeout(2 * self._call_seconds))
        except Unavailable:
            raise
        except concurrent.futures.TimeoutError:
            raise Unavailable("Firestore did not answer in time") from None
        except Exception as exc:
            raise Unavailable(f"Firestore failed ({type(exc).__name__})") from exc

    def _collection_ref(self) -> firestore.CollectionReference:
        return self._client().collection(self._collection)

    def _ref(self, key: JobKey) -> firestore.DocumentReference:
        return self._collection_ref().document(key.document_id)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _call(self, deadline: Deadline, call: Callable[[dict[str, Any]], Any]) -> Any:
        return firestore_call(deadline, call, self._call_seconds)


def _run_aggregation(aggregation: Any, options: dict[str, Any]) -> Any:
    return aggregation.get(**options)


def _terminal_of(key: JobKey, event_type: Any) -> bool:
    kind, _, outcome = str(event_type or "").partition(".")
    return kind == key.kind and bool(outcome) and outcome not in NON_TERMINAL


def _decide(
    key: JobKey, owner: str, record: dict[str, Any] | None, now: datetime
) -> JobClaimResult | None:
    """What an existing record means for this claimant; None: the job is free to claim."""
    if record is None:
        return None
    state = record.get("state")
    if state == PUBLISHED:
        return JobPublished(
            key, record.get("event_type"), record.get("topic"), record.get("message_id")
        )
    if state != CLAIMED or record.get("owner") == owner:
        # Our own earlier attempt holds it only if its delivery claim died too (the delivery
        # claim is taken first and dedups by webhook-id): take it back.
        return None
    lease_until = record.get("lease_until")
    if isinstance(lease_until, datetime) and lease_until > now:
        return JobInFlight(key, max(1, math.ceil((lease_until - now).total_seconds())))
    return None


class TerminalEvents:
    """The webhook path's side of the job record, for `Relay`: only a delivered terminal event
    of a known kind costs a call; everything else gets None without one."""

    def __init__(self, gate: JobGate) -> None:
        self._gate = gate

    def claim(self, event: Event, webhook_id: str, deadline: Deadline) -> JobClaimResult | None:
        key = key_for_event(event)
        if key is None:
            return None
        return self._gate.claim(key, webhook_id, event.type, event.subject, deadline)

    def published(
        self, claim: JobClaimResult | None, topic: str, message_id: str, deadline: Deadline
    ) -> None:
        """`deadline`: the budget the relay keeps for its record writes after a publish."""
        if not isinstance(claim, JobClaimed):
            return
        try:
            self._gate.mark_published(claim, topic, message_id, deadline)
        except Exception as exc:  # published is published: the answer stays 2xx
            log.error(
                "event published but its job record was not updated (%s); the reconciler may "
                "publish the job's event again after the lease",
                type(exc).__name__,
                extra={"job_id": claim.key.job_id, "message_id": message_id},
            )

    def release(self, claim: JobClaimResult | None, deadline: Deadline) -> None:
        if not isinstance(claim, JobClaimed):
            return
        try:
            self._gate.release(claim, deadline)
        except Exception as exc:
            log.warning(
                "job claim not released (%s); it frees itself when its lease ends",
                type(exc).__name__,
                extra={"job_id": claim.key.job_id},
            )
