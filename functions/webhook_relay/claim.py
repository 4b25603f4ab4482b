"""Who publishes a `webhook-id`: a Firestore record per delivery, claimed with a lease.

States of the record, and what a request that finds it does:
  absent                    create it `claimed` with a lease: this request publishes
  claimed, lease live       another request is publishing: 409 `in_flight`, retry later
  claimed, lease past       that request died or gave up (released): take it over, attempts + 1
  published                 already done: 200 `duplicate`

The first step is a plain create (a single atomic commit that fails if the record exists;
a terminal event's job record, jobs.py, is created in the same commit, so a new terminal
delivery costs what any delivery costs), not a read-then-write transaction: on a burst of
identical retries, transactions on one document serialize behind each other's locks. For 20
at once on the emulator, the slowest took 2 to 10 s and up to 57 in 100 gave up after 5
attempts; create-first took at most 0.05 s (bench/results.md, row 6). The transaction runs
only to take over a released or expired claim, a rare path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_transient_error
from google.cloud import firestore

from . import writes
from .deadline import Deadline
from .errors import Unavailable
from .stored import capped, capped_or_none

TTL_FIELD = "expire_at"
CLAIMED, PUBLISHED = "claimed", "published"
_DECIDING = ("owner", "state", "lease_until")  # what a request that finds a record reads
CALL_SECONDS = 2.5  # cap per Firestore call, so claim + publish + record fit the budget
# Take-overs are rare; a burst of them (a region-wide outage ending) may queue, never block.
TAKEOVER_THREADS = 16
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Companion:
    """Another record written in the same commit as a delivery record: created with a new
    claim (`token` None), or updated with its `published` mark only if unchanged since
    `token`. `owner` tells our own landed write from another request's."""

    ref: Any  # firestore.DocumentReference
    fields: dict[str, Any]
    owner: str
    token: Any = None


@dataclass(frozen=True)
class Claimed:
    webhook_id: str
    attempts: int
    token: Any  # the record's update time after our claim: release only what is still ours
    owner: str = ""
    # The companion's update time when it was created in the claim's own commit; None when
    # it was not (the caller then claims it on its own).
    companion_token: Any = None


@dataclass(frozen=True)
class Duplicate:
    webhook_id: str


@dataclass(frozen=True)
class InFlight:
    webhook_id: str
    retry_after: int


ClaimResult = Claimed | Duplicate | InFlight


class Claims(Protocol):
    def claim(
        self,
        webhook_id: str,
        event_type: str,
        subject: str | None,
        deadline: Deadline,
        owner: str | None = None,
        companion: Companion | None = None,
    ) -> ClaimResult:
        """Raises `Unavailable` if the store cannot answer within the deadline. `companion`
        is created in the same commit when neither record exists yet (else not at all)."""

    def mark_published(
        self,
        claim: Claimed,
        topic: str | None,
        message_id: str | None,
        deadline: Deadline,
        companion: Companion | None = None,
    ) -> None:
        """Only while the claim is still ours (and `companion`'s record unchanged since its
        token), in one commit. May raise; the event is already published, so the caller
        only logs it: FailedPrecondition means the delivery's claim was lost."""

    def release(self, claim: Claimed, deadline: Deadline) -> None:
        """Best effort: if it fails, the lease expiring releases the claim anyway."""


class _Owners:
    """Tokens naming one request each: unique, not secret. A random prefix per process and a
    counter, so a request reads no randomness from the OS. gunicorn forks its workers after
    the function is imported: each child draws its own prefix."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = uuid.uuid4().hex[:20] + "-"
        self._count = itertools.count()  # next() on it is atomic under the GIL: no lock

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


new_owner = _Owners()


def document_id(webhook_id: str) -> str:
    # Document ids cannot hold '/', be '.' or '..', or exceed 1500 bytes; webhook ids can.
    return hashlib.sha256(webhook_id.encode()).hexdigest()


class FirestoreClaims:
    def __init__(
        self,
        client: Callable[[], firestore.Client],
        collection: str,
        lease_seconds: int,
        ttl_hours: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._collection = collection
        self._lease = timedelta(seconds=lease_seconds)
        self._ttl = timedelta(hours=ttl_hours)
        self._clock = clock
        # A worker thread bounds the whole take-over (BoundedTransaction its begin and commit).
        self._workers = concurrent.futures.ThreadPoolExecutor(TAKEOVER_THREADS, "claim-takeover")

    def claim(
        self,
        webhook_id: str,
        event_type: str,
        subject: str | None,
        deadline: Deadline,
        owner: str | None = None,
        companion: Companion | None = None,
    ) -> ClaimResult:
        ref = self._ref(webhook_id)
        now = self._now()
        # This request's token: tells our own landed create from another's.
        owner = owner or new_owner()
        record = {
            "webhook_id": webhook_id,
            "owner": owner,
            "state": CLAIMED,
            "lease_until": now + self._lease,
            "attempts": 1,
            "event_type": capped(event_type),
            "subject": capped_or_none(subject),
            "topic": None,
            "message_id": None,
            "first_seen_at": now,
            "published_at": None,
            TTL_FIELD: now + self._ttl,
        }
        created = self._create(webhook_id, ref, record, companion, deadline)
        if created is not None:
            return created
        found = self._read(ref, deadline)
        if found is None and companion is not None:
            # It was the companion's record that exists (a watched or reconciled job): the
            # delivery's record alone, and the caller claims the job on its own.
            created = self._create(webhook_id, ref, record, None, deadline)
            if created is not None:
                return created
            found = self._read(ref, deadline)
        current, token = found or (None, None)
        if current is not None and current.get("owner") == owner:
            # Our create landed but its answer was lost, and the retry found it.
            return Claimed(webhook_id, 1, token, owner)
        decided = _decide(webhook_id, current, now)
        if decided is not None:
            return decided
        return self._take_over(ref, record, deadline)

    def _create(
        self,
        webhook_id: str,
        ref: firestore.DocumentReference,
        record: dict[str, Any],
        companion: Companion | None,
        deadline: Deadline,
    ) -> Claimed | None:
        """One atomic commit creating the record (and the companion's); None if either exists."""

        creates = [writes.create(ref, record)]
        if companion is not None:
            creates.append(writes.create(companion.ref, companion.fields))

        def commit(options: dict[str, Any]) -> Any:
            try:
                return writes.commit(self._client(), creates, options)
            except api_exceptions.Aborted:
                if companion is None:
                    raise
                # The companion's record is locked by a transaction (a run claiming the
                # job): it exists, or is about to. The caller claims it on its own.
                raise _CompanionLocked from None

        try:
            times = self._call(deadline, commit)
        except (api_exceptions.AlreadyExists, _CompanionLocked):
            return None
        except Unavailable:
            self._undo_uncertain_create(ref, record["owner"], companion, deadline)
            raise
        companion_token = times[1] if companion is not None else None
        return Claimed(webhook_id, 1, times[0], record["owner"], companion_token)

    def _take_over(
        self, ref: firestore.DocumentReference, record: dict[str, Any], deadline: Deadline
    ) -> ClaimResult:
        webhook_id = record["webhook_id"]

        @firestore.transactional
        def take(transaction: firestore.Transaction) -> ClaimResult:
            timeout = deadline.timeout(CALL_SECONDS)
            snapshot = ref.get(transaction=transaction, timeout=timeout)
            current = snapshot.to_dict() if snapshot.exists else None
            now = self._now()
            found = _decide(webhook_id, current, now)
            if found is not None:
                return found
            if current is None:
                transaction.create(ref, record)
                return Claimed(webhook_id, 1, None)
            attempts = int(current.get("attempts") or 0) + 1
            transaction.update(
                ref,
                {
                    "owner": record["owner"],
                    "state": CLAIMED,
                    "lease_until": now + self._lease,
                    "attempts": attempts,
                    "event_type": record["event_type"],
                    "subject": record["subject"],
                    TTL_FIELD: now + self._ttl,
                },
            )
            return Claimed(webhook_id, attempts, None)

        def run() -> ClaimResult:
            # Queued behind other take-overs past the request's budget: its answer is gone.
            transaction = BoundedTransaction(self._client(), deadline.timeout(CALL_SECONDS))
            result: ClaimResult = take(transaction)
            if isinstance(result, Claimed):
                written = transaction.write_results or []
                token = written[0].update_time if written else None
                result = Claimed(webhook_id, result.attempts, token, record["owner"])
            return result

        future = self._workers.submit(run)
        try:
            return future.result(timeout=deadline.timeout(2 * CALL_SECONDS))
        except Unavailable:
            raise
        except concurrent.futures.TimeoutError:
            raise Unavailable("Firestore did not answer in time") from None
        except Exception as exc:
            raise Unavailable(f"Firestore failed ({type(exc).__name__})") from exc

    def _undo_uncertain_create(
        self,
        ref: firestore.DocumentReference,
        owner: str,
        companion: Companion | None,
        deadline: Deadline,
    ) -> None:
        """A create that timed out may still have been written. Left alone, that claim would
        answer Gemini's retries `in_flight` for a whole lease; release it (and the job claim
        created with it) if it is ours and nobody wrote since."""
        refs = [ref] + ([companion.ref] if companion is not None else [])
        for each in refs:
            with contextlib.suppress(Exception):
                self._release_if_ours(each, owner, deadline)

    def _release_if_ours(
        self, ref: firestore.DocumentReference, owner: str, deadline: Deadline
    ) -> None:
        snapshot = self._call(deadline, lambda options: ref.get(**options))
        current = snapshot.to_dict() if snapshot.exists else None
        if current and current.get("owner") == owner and current.get("attempts", 1) == 1:
            release = Companion(ref, {"lease_until": self._now()}, owner, snapshot.update_time)
            write_if_ours(self._client(), [release], deadline)

    def mark_published(
        self,
        claim: Claimed,
        topic: str | None,
        message_id: str | None,
        deadline: Deadline,
        companion: Companion | None = None,
    ) -> None:
        now = self._now()
        fields = {
            "state": PUBLISHED,
            "topic": topic,
            "message_id": message_id,
            "published_at": now,
            TTL_FIELD: now + self._ttl,
        }
        # Only over our own claim: a request whose lease ran out must not overwrite the record
        # of the one that took over (FailedPrecondition reaches the caller).
        mine = Companion(self._ref(claim.webhook_id), fields, claim.owner, claim.token)
        client = self._client()
        if companion is None:
            write_if_ours(client, [mine], deadline)
            return
        try:
            write_if_ours(client, [mine, companion], deadline)
            return
        except api_exceptions.FailedPrecondition:
            pass
        # One of the two records moved on since our claim: each on its own, so the one still
        # ours is marked, and the caller hears about the delivery's.
        try:
            write_if_ours(client, [companion], deadline)
        except Exception as exc:
            log.error(
                "job record not marked published (%s): its claim was taken over while this "
                "request published, so the job's event may be published twice",
                type(exc).__name__,
                extra={"webhook_id": claim.webhook_id, "status": "published_twice"},
            )
        write_if_ours(client, [mine], deadline)

    def release(self, claim: Claimed, deadline: Deadline) -> None:
        release = Companion(
            self._ref(claim.webhook_id), {"lease_until": self._now()}, claim.owner, claim.token
        )
        # FailedPrecondition: someone took the claim over since; theirs to release, not ours.
        with contextlib.suppress(api_exceptions.FailedPrecondition):
            write_if_ours(self._client(), [release], deadline)

    def _read(
        self, ref: firestore.DocumentReference, deadline: Deadline
    ) -> tuple[dict[str, Any], Any] | None:
        """What a request that found the record needs of it (_decide), and its token."""
        return self._call(  # type: ignore[no-any-return]
            deadline, lambda options: writes.read(self._client(), ref, _DECIDING, options)
        )

    def _ref(self, webhook_id: str) -> firestore.DocumentReference:
        return self._client().collection(self._collection).document(document_id(webhook_id))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @staticmethod
    def _call(deadline: Deadline, call: Callable[[dict[str, Any]], Any]) -> Any:
        return firestore_call(deadline, call)


def firestore_call(
    deadline: Deadline, call: Callable[[dict[str, Any]], Any], cap: float = CALL_SECONDS
) -> Any:
    """`call(options)` with a timeout and transient retries inside what is left of `deadline`
    (at most `cap`); store failures become `Unavailable`, the two answers that mean something
    about the record (AlreadyExists, FailedPrecondition) reach the caller."""
    timeout = deadline.timeout(cap)
    retry = Retry(
        predicate=if_transient_error, initial=0.05, maximum=0.5, multiplier=2, timeout=timeout
    )
    try:
        return call({"retry": retry, "timeout": timeout})
    except (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition):
        raise
    except api_exceptions.GoogleAPIError as exc:
        raise Unavailable(f"Firestore failed ({type(exc).__name__})") from exc


class _CompanionLocked(Exception):
    """A create with a companion met a transaction's lock on the companion's record."""


def write_if_ours(
    client: firestore.Client,
    records: list[Companion],
    deadline: Deadline,
    cap: float = CALL_SECONDS,
) -> None:
    """Updates every record in one commit, each only if unchanged since its token.

    FailedPrecondition reaches the caller, except when the commit did land and only its
    answer was lost (the retry then finds the records changed, by us): every record read
    back carries our owner and the values written, so it counts as done."""

    updates = [writes.update(each.ref, each.fields, each.token) for each in records]

    def commit(options: dict[str, Any]) -> Any:
        return writes.commit(client, updates, options)

    try:
        firestore_call(deadline, commit, cap)
    except api_exceptions.FailedPrecondition:
        if not all(_landed(each, deadline, cap) for each in records):
            raise


def _landed(write: Companion, deadline: Deadline, cap: float) -> bool:
    checked = [name for name in ("state", "message_id") if name in write.fields]
    if not checked:
        return False
    snapshot = firestore_call(deadline, lambda options: write.ref.get(**options), cap)
    current = snapshot.to_dict() if snapshot.exists else None
    return (
        current is not None
        and current.get("owner") == write.owner
        and all(current.get(name) == write.fields[name] for name in checked)
    )


class BoundedTransaction(firestore.Transaction):
    """A transaction whose begin and commit give up after `timeout` seconds.

    The library runs both with the defaults of its generated client (60 s, retried) and takes
    no timeout for them; a request must answer within 10 s. These two overrides pass one, and
    otherwise do what the library's own methods do (google-cloud-firestore, pinned in
    functions/requirements.txt).
    """

    def __init__(self, client: firestore.Client, timeout: float) -> None:
        super().__init__(client, max_attempts=2)
        self._timeout = timeout

    def _bounds(self) -> dict[str, Any]:
        # The default retry policy would also keep trying for 60 s.
        retry = Retry(
            predicate=if_transient_error, initial=0.05, maximum=0.5, timeout=self._timeout
        )
        return {"retry": retry, "timeout": self._timeout}

    def _begin(self, retry_id: bytes | None = None) -> None:
        if self.in_progress:
            raise ValueError("transaction already begun")
        response = self._client._firestore_api.begin_transaction(
            request={
                "database": self._client._database_string,
                "options": self._options_protobuf(retry_id),
            },
            metadata=self._client._rpc_metadata,
            **self._bounds(),
        )
        self._id = response.transaction

    def _commit(self) -> list[Any]:
        if not self.in_progress:
            raise ValueError("no transaction in progress")
        response = self._client._firestore_api.commit(
            request={
                "database": self._client._database_string,
                "writes": self._write_pbs,
                "transaction": self._id,
            },
            metadata=self._client._rpc_metadata,
            **self._bounds(),
        )
        self._clean_up()
        self.write_results = list(response.write_results)
        self.commit_time = response.commit_time
        return self.write_results


def _decide(webhook_id: str, record: dict[str, Any] | None, now: datetime) -> ClaimResult | None:
    """What an existing record means for this request; None: the claim is free to take."""
    if record is None:
        return None
    if record.get("state") == PUBLISHED:
        return Duplicate(webhook_id)
    lease_until = record.get("lease_until")
    if isinstance(lease_until, datetime) and lease_until > now:
        wait = (lease_until - now).total_seconds()
        return InFlight(webhook_id, max(1, math.ceil(wait)))
    return None
