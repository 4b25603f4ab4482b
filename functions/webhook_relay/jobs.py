"""One terminal event per job: a Firestore record per job, claimed by whichever path publishes.

Both the webhook path (a delivered terminal event) and `reconcile` (a job the API shows
terminal whose event never came) claim the job's record before publishing:

  absent                    take it: a delivery creates it in the same commit as its delivery
                            record (claim.py), a run in a transaction
  `watching`, or `claimed` by this same owner token (a commit whose answer was lost)
                            take it: `claimed` by this owner with a lease, then publish
  `claimed`, lease live     another request or run is publishing (a retry of the same delivery
                            too): the delivery is 409 `in_flight`, the run skips the job
  `claimed`, lease past     if the claiming delivery's own record says published, the event is
                            out: mark the job published with it; otherwise take it over
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
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from .claim import Companion, document_id, firestore_call, write_if_ours
from .deadline import Deadline
from .errors import ConfigError, Unavailable
from .normalize import Event
from .stored import capped, capped_or_none

log = logging.getLogger(__name__)
DEFAULT_COLLECTION = "gemini_jobs"
WATCHING, CLAIMED, PUBLISHED = "watching", "claimed", "published"
TTL_FIELD = "expire_at"
CALL_SECONDS = 2.5  # cap per Firestore call, as for delivery records (claim.py)
CLAIM_WORKERS = 16
CONTENDED_RETRY_SECONDS = 5


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


# The delivered types that settle a job: exactly the catalog's terminal events. Any other type,
# a new one in a known family included (say `batch.running`), is published per `webhook-id`
# and never settles a job: were it to, the real terminal event after it would be answered
# `duplicate` and lost. `reconcile`'s own synthesized types settle the job on its side.
SETTLING_TYPES = frozenset(
    {
        "batch.succeeded",
        "batch.failed",
        "batch.expired",
        "batch.cancelled",
        "interaction.completed",
        "interaction.failed",
        "interaction.cancelled",
        "video.generated",
    }
)


def key_for_event(event: Event) -> JobKey | None:
    """The job whose terminal event this delivery is; None for anything else (other types,
    quarantined, `relay.*`, pings, no id), which then costs no job-record call."""
    if event.quarantined or event.subject is None or event.type not in SETTLING_TYPES:
        return None
    job_id = job_id_of(event.subject)
    return JobKey(event.type.partition(".")[0], job_id) if job_id else None


@dataclass(frozen=True)
class JobClaimed:
    key: JobKey
    owner: str
    token: Any  # the record's update time after our claim: write only while it is still ours
    lease_until: datetime  # no path publishes unless this still covers its publish and write


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
    """What the webhook path needs: claim a job's terminal event, then publish or let go.

    The common path costs no call of its own: `new_claim` is created in the same commit as the
    delivery's record, and `published_write` lands in the same commit as its `published`
    mark (claim.py). `claim` is the fallback when that create finds the job's record."""

    def new_claim(
        self, key: JobKey, owner: str, webhook_id: str, event_type: str, name: str
    ) -> tuple[Companion, datetime]:
        """The record that claims the job for `owner`, to create, and its lease."""

    def claimed(self, key: JobKey, owner: str, token: Any, lease_until: datetime) -> JobClaimed:
        """The claim `new_claim` made, once its commit landed."""

    def claim(
        self,
        key: JobKey,
        owner: str,
        event_type: str,
        name: str | None,
        deadline: Deadline,
        webhook_id: str | None = None,
    ) -> JobClaimResult:
        """Raises `Unavailable` if the store cannot answer within the deadline."""

    def published_write(self, claim: JobClaimed, topic: str, message_id: str) -> Companion:
        """The `published` mark, preconditioned on the claim still being ours."""

    def release(self, claim: JobClaimed, deadline: Deadline) -> None:
        """Best effort: the lease ending releases it anyway."""


class FirestoreJobs:
    """Job records in `collection`; every call bounded by the caller's deadline.

    `deliveries` (the delivery records' collection) lets a take-over see that the delivery
    which claimed a job did publish, though its job record still says `claimed`."""

    def __init__(
        self,
        client: Callable[[], firestore.Client],
        collection: str,
        lease_seconds: int,
        ttl_hours: int,
        clock: Callable[[], float] = time.time,
        call_seconds: float = CALL_SECONDS,
        deliveries: str | None = None,
    ) -> None:
        self._client = client
        self._collection = collection
        self._deliveries = deliveries
        # A request's budget is tight (10 s in all); a scheduled run can afford to wait longer
        # on a slow or contended transaction rather than give up and leave a claim behind.
        self._call_seconds = call_seconds
        self._lease = timedelta(seconds=lease_seconds)
        self._ttl = timedelta(hours=ttl_hours)
        self._clock = clock
        # Transactions take no timeout for begin/commit; a worker thread bounds the wait. Only
        # deliveries that find their job's record claim here (the common path creates it with
        # the delivery record), but a burst of those must not queue behind each other.
        self._workers = concurrent.futures.ThreadPoolExecutor(CLAIM_WORKERS, "job-claim")

    # --- both paths --------------------------------------------------------------------------

    def new_claim(
        self, key: JobKey, owner: str, webhook_id: str, event_type: str, name: str
    ) -> tuple[Companion, datetime]:
        now = self._now()
        fields = self._claim_fields(key, owner, event_type, webhook_id, now)
        fields |= {"name": capped(name), "first_seen_at": now, CHECKED_FIELD: now}
        return Companion(self._ref(key), fields, owner), fields["lease_until"]

    def claimed(self, key: JobKey, owner: str, token: Any, lease_until: datetime) -> JobClaimed:
        return JobClaimed(key, owner, token, lease_until)

    def claim(
        self,
        key: JobKey,
        owner: str,
        event_type: str,
        name: str | None,
        deadline: Deadline,
        webhook_id: str | None = None,
    ) -> JobClaimResult:
        """In a transaction. `owner` is this request's (or this run's attempt's) own token:
        a record carrying it is ours (a write that landed though its answer was lost); a live
        claim of anyone else, a retry of the same delivery included, waits for its lease."""
        ref = self._ref(key)
        # Set when the caller stops waiting: the library may still run (or re-run, after a
        # contended commit) this transaction, which must then write nothing, or it would take
        # the claim back from the retry that holds it by then.
        abandoned = threading.Event()

        @firestore.transactional
        def take(transaction: firestore.Transaction) -> JobClaimResult:
            timeout = deadline.timeout(self._call_seconds)
            snapshot = ref.get(transaction=transaction, timeout=timeout)
            current = snapshot.to_dict() if snapshot.exists else None
            now = self._now()
            found = _decide(key, owner, current, now)
            if found is None and current is not None:
                found = self._adopt_published_delivery(key, current, transaction, ref, timeout)
            if found is not None:
                return found
            if abandoned.is_set():
                raise _Abandoned
            fields = self._claim_fields(key, owner, event_type, webhook_id, now)
            if current is None:
                transaction.create(
                    ref,
                    fields
                    | {"name": capped_or_none(name), "first_seen_at": now, CHECKED_FIELD: now},
                )
            else:
                if name and not current.get("name"):
                    fields["name"] = capped(name)
                transaction.update(ref, fields)
            return JobClaimed(key, owner, None, fields["lease_until"])

        def run() -> JobClaimResult:
            # The library's own transaction: begin and commit wait on a contended lock (a
            # delivery and a run racing) rather than fail; the caller's wait is bounded.
            transaction = self._client().transaction()
            result: JobClaimResult = take(transaction)
            if isinstance(result, JobClaimed):
                written = transaction.write_results or []
                token = written[0].update_time if written else None
                result = JobClaimed(key, owner, token, result.lease_until)
                if abandoned.is_set():
                    # The commit was under way when the caller gave up (answered 503): free
                    # the claim now rather than make Gemini's retry wait for its lease.
                    self.release(result, Deadline(self._call_seconds))
            return result

        future = self._workers.submit(run)
        try:
            return future.result(timeout=deadline.timeout(2 * self._call_seconds))
        except Unavailable:
            raise
        except concurrent.futures.TimeoutError:
            # Waiting on the record's lock: another request's or a run's transaction holds
            # it (a Firestore that does not answer at all fails the caller's calls before
            # this one). The loser of that race is told to come back, like any live claim.
            abandoned.set()
            return JobInFlight(key, CONTENDED_RETRY_SECONDS)
        except Exception as exc:
            raise Unavailable(f"Firestore failed ({type(exc).__name__})") from exc

    def published_write(self, claim: JobClaimed, topic: str, message_id: str) -> Companion:
        now = self._now()
        fields = {
            "state": PUBLISHED,
            "topic": topic,
            "message_id": message_id,
            "published_at": now,
            TTL_FIELD: now + self._ttl,
        }
        return Companion(self._ref(claim.key), fields, claim.owner, claim.token)

    def mark_published(
        self, claim: JobClaimed, topic: str, message_id: str, deadline: Deadline
    ) -> None:
        """Marks the claim published, only while it is still ours. A write that landed but
        whose answer was lost (retried into FailedPrecondition) counts as done."""
        write_if_ours(
            self._client(),
            [self.published_write(claim, topic, message_id)],
            deadline,
            self._call_seconds,
        )

    def release(self, claim: JobClaimed, deadline: Deadline) -> None:
        # FailedPrecondition: someone took the claim over since; theirs to release, not ours.
        write = Companion(
            self._ref(claim.key), {"lease_until": self._now()}, claim.owner, claim.token
        )
        with contextlib.suppress(api_exceptions.FailedPrecondition):
            write_if_ours(self._client(), [write], deadline, self._call_seconds)

    def _claim_fields(
        self, key: JobKey, owner: str, event_type: str, webhook_id: str | None, now: datetime
    ) -> dict[str, Any]:
        return {
            "kind": key.kind,
            "job_id": capped(key.job_id),
            "state": CLAIMED,
            "owner": owner,
            "webhook_id": capped_or_none(webhook_id),
            "lease_until": now + self._lease,
            "event_type": capped(event_type),
            "claimed_at": now,
            TTL_FIELD: now + self._ttl,
        }

    def _adopt_published_delivery(
        self,
        key: JobKey,
        current: dict[str, Any],
        transaction: firestore.Transaction,
        ref: firestore.DocumentReference,
        timeout: float,
    ) -> JobPublished | None:
        """A job record left `claimed` past its lease by a delivery whose own record says it
        published (the job's `published` write failed, or the process died between the two
        commits of the fallback path): the event is out, so the job is marked published with
        that delivery's message, inside this transaction, instead of being taken over."""
        webhook_id = current.get("webhook_id")
        if self._deliveries is None or current.get("state") != CLAIMED or not webhook_id:
            return None
        delivery_ref = self._client().collection(self._deliveries).document(document_id(webhook_id))
        delivered = delivery_ref.get(transaction=transaction, timeout=timeout).to_dict() or {}
        if delivered.get("state") != PUBLISHED or delivered.get("event_type") not in SETTLING_TYPES:
            return None
        now = self._now()
        fields = {
            "state": PUBLISHED,
            "event_type": delivered.get("event_type"),
            "topic": delivered.get("topic"),
            "message_id": delivered.get("message_id"),
            "published_at": delivered.get("published_at") or now,
            TTL_FIELD: now + self._ttl,
        }
        transaction.update(ref, fields)
        return JobPublished(
            key, delivered.get("event_type"), delivered.get("topic"), delivered.get("message_id")
        )

    # --- the reconciler and `watch` ---------------------------------------------------------------

    def watch(self, key: JobKey, name: str, deadline: Deadline) -> bool:
        """Add a job to the watch list; False if it already had a record (left as it is)."""
        now = self._now()
        record = {
            "kind": key.kind,
            "job_id": capped(key.job_id),
            "name": capped(name),
            "state": WATCHING,
            "watched_at": now,
            "first_seen_at": now,
            # Every watched record has one: the run's ordered query skips a record without it.
            CHECKED_FIELD: now,
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

    def unfinished(self, limit: int, deadline: Deadline) -> list[Watched]:
        """Jobs not published yet (watched, or claimed by a path that may have died), the least
        recently checked first. The query, with its composite index (state, checked_at) in
        infra/: where state in [watching, claimed] order by checked_at ascending limit `limit`."""
        query = (
            self._collection_ref()
            .where(filter=FieldFilter("state", "in", [WATCHING, CLAIMED]))
            .order_by(CHECKED_FIELD)
            .limit(limit)
        )
        snapshots = self._call(deadline, lambda options: list(query.stream(**options)))
        return [Watched(s.id, s.to_dict() or {}, s.update_time) for s in snapshots]

    def backfill_checked(self, page: int, deadline: Deadline) -> int:
        """Give `checked_at` to unfinished records without one (older than the field, or
        created by a path that does not set it), which the ordered query above would never
        return: one page per call, in document order, from where the last call stopped (kept
        in a record of its own), wrapping round. They get the oldest possible time, so the
        next check takes them first. Returns how many were given one."""
        marker = self._collection_ref().document(SCAN_DOCUMENT)
        found = self._call(deadline, lambda options: marker.get(**options)).to_dict() or {}
        query = (
            self._collection_ref()
            .where(filter=FieldFilter("state", "in", [WATCHING, CLAIMED]))
            .order_by("__name__")
            .limit(page)
        )
        cursor = found.get("cursor")
        if isinstance(cursor, str) and cursor:
            query = query.start_after({"__name__": cursor})
        snapshots = self._call(deadline, lambda options: list(query.stream(**options)))
        given, now = 0, self._now()
        for snapshot in snapshots:
            record = snapshot.to_dict() or {}
            if CHECKED_FIELD in record or _held(record, now):
                continue  # a live claim is its holder's to write (its token): the next pass
            ref, read = snapshot.reference, snapshot.update_time
            given += self._update_as_read(ref, {CHECKED_FIELD: NEVER}, read, deadline)
        end = snapshots[-1].id if len(snapshots) == page else None  # the end: start over
        self._call(
            deadline,
            lambda options: marker.set({"cursor": end, "scanned_at": self._now()}, **options),
        )
        return given

    def checked(self, watched: Watched, deadline: Deadline) -> bool:
        """Note that a run checked this job now, and keep its record as long again: a job
        still running must not lose its record to the TTL. Only if the record is as the run
        read it (False otherwise): a claim written since is its owner's to write."""
        now = self._now()
        ref = self._collection_ref().document(watched.document_id)
        fields = {CHECKED_FIELD: now, TTL_FIELD: now + self._ttl}
        return self._update_as_read(ref, fields, watched.update_time, deadline)

    def _update_as_read(
        self,
        ref: firestore.DocumentReference,
        fields: dict[str, Any],
        update_time: Any,
        deadline: Deadline,
    ) -> bool:
        """Update a record only if it is still as read (False if not, or gone): a claim
        written since carries its holder's token, which a write of ours would invalidate."""
        option = self._client().write_option(last_update_time=update_time)
        try:
            self._call(deadline, lambda options: ref.update(fields, option=option, **options))
        except (api_exceptions.FailedPrecondition, api_exceptions.NotFound):
            return False
        return True

    def adopt_delivery(self, key: JobKey, name: str, deliveries: str, deadline: Deadline) -> bool:
        """Whether a delivery record (collection `deliveries`) shows this job's terminal event
        published with no job record: deliveries from before job records existed. If so, the
        job's record is written `published`, once, so no run publishes the event again."""
        # Delivery records keep the subject as `stored.capped` left it.
        subjects = list(dict.fromkeys([capped(name), capped(key.job_id)]))
        query = (
            self._client()
            .collection(deliveries)
            .where(filter=FieldFilter("subject", "in", subjects))
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
            "job_id": capped(key.job_id),
            "name": capped(name),
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
            "job_id": capped(key.job_id),
            "name": capped(name),
            "state": WATCHING,
            "first_seen_at": now,
            "terminal_seen_at": now,
            CHECKED_FIELD: now,
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
    """Whether a delivered type is this job's terminal event (only the catalog's settle)."""
    return event_type in SETTLING_TYPES and str(event_type).partition(".")[0] == key.kind


class _Abandoned(Exception):
    """The caller stopped waiting for this claim: write nothing."""


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
        # Watched, or our own claim (its commit landed though its answer was lost).
        return None
    lease_until = record.get("lease_until")
    if isinstance(lease_until, datetime) and lease_until > now:
        return JobInFlight(key, max(1, math.ceil((lease_until - now).total_seconds())))
    return None


# --- the reconciler's side: its fields and what its queries return -------------------------------

CHECKED_FIELD = "checked_at"  # when a run last checked an unfinished job: the watch list's order
SCAN_DOCUMENT = "_reconcile_scan"  # no job's: where the `checked_at` backfill's scan stands
NEVER = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Watched:
    """An unfinished job's record as a run read it; `update_time` guards the run's writes."""

    document_id: str
    record: dict[str, Any]
    update_time: Any


def _held(record: dict[str, Any], now: datetime) -> bool:
    """A claim whose lease is live: no one but its holder may write the record (the holder's
    `published` write is preconditioned on the record being as its claim left it)."""
    lease = record.get("lease_until")
    return record.get("state") == CLAIMED and isinstance(lease, datetime) and lease > now
