"""Who publishes a `webhook-id`: a Firestore record per delivery, claimed with a lease.

States of the record, and what a request that finds it does:
  absent                    create it `claimed` with a lease: this request publishes
  claimed, lease live       another request is publishing: 409 `in_flight`, retry later
  claimed, lease past       that request died or gave up (released): take it over, attempts + 1
  published                 already done: 200 `duplicate`

The first step is a plain `create` (a single atomic write that fails if the record exists),
not a read-then-write transaction: on a burst of identical retries, transactions on one
document serialize behind each other's locks. For 20 at once on the emulator, the slowest took
2 to 10 s and up to 57 in 100 gave up after 5 attempts; create-first took at most 0.05 s
(bench/results.md, row 6). The transaction runs only to take over a released or expired
claim, a rare path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_transient_error
from google.cloud import firestore

from .deadline import Deadline
from .errors import Unavailable

TTL_FIELD = "expire_at"
CLAIMED, PUBLISHED = "claimed", "published"
CALL_SECONDS = 2.5  # cap per Firestore call, so claim + publish + record fit the budget


@dataclass(frozen=True)
class Claimed:
    webhook_id: str
    attempts: int
    token: Any  # the record's update time after our claim: release only what is still ours


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
        self, webhook_id: str, event_type: str, subject: str | None, deadline: Deadline
    ) -> ClaimResult:
        """Raises `Unavailable` if the store cannot answer within the deadline."""

    def mark_published(
        self, claim: Claimed, topic: str, message_id: str, deadline: Deadline
    ) -> None:
        """May raise; the event is already published, so the caller only logs it."""

    def release(self, claim: Claimed, deadline: Deadline) -> None:
        """Best effort: if it fails, the lease expiring releases the claim anyway."""


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
        # Transactions take no timeout for begin/commit; a worker thread bounds them.
        self._workers = concurrent.futures.ThreadPoolExecutor(4, "claim-takeover")

    def claim(
        self, webhook_id: str, event_type: str, subject: str | None, deadline: Deadline
    ) -> ClaimResult:
        ref = self._ref(webhook_id)
        now = self._now()
        lease_until = now + self._lease
        record = {
            "webhook_id": webhook_id,
            "state": CLAIMED,
            "lease_until": lease_until,
            "attempts": 1,
            "event_type": event_type,
            "subject": subject,
            "topic": None,
            "message_id": None,
            "first_seen_at": now,
            "published_at": None,
            TTL_FIELD: now + self._ttl,
        }
        try:
            result = self._call(deadline, lambda options: ref.create(record, **options))
            return Claimed(webhook_id, 1, result.update_time)
        except api_exceptions.AlreadyExists:
            pass
        except Unavailable:
            self._undo_uncertain_create(ref, lease_until, deadline)
            raise
        snapshot = self._call(deadline, lambda options: ref.get(**options))
        found = _decide(webhook_id, snapshot.to_dict() if snapshot.exists else None, now)
        if found is not None:
            return found
        return self._take_over(ref, record, deadline)

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
            transaction = self._client().transaction()
            result: ClaimResult = take(transaction)
            if isinstance(result, Claimed):
                written = transaction.write_results or []
                token = written[0].update_time if written else None
                result = Claimed(webhook_id, result.attempts, token)
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
        self, ref: firestore.DocumentReference, lease_until: datetime, deadline: Deadline
    ) -> None:
        """A create that timed out may still have been written. Left alone, that claim would
        answer Gemini's retries `in_flight` for a whole lease; release it if it is ours (our
        lease end, to the microsecond, serves as the token) and nobody wrote since."""
        with contextlib.suppress(Exception):
            snapshot = self._call(deadline, lambda options: ref.get(**options))
            current = snapshot.to_dict() if snapshot.exists else None
            if current and current.get("lease_until") == lease_until and current["attempts"] == 1:
                option = self._client().write_option(last_update_time=snapshot.update_time)
                self._call(
                    deadline,
                    lambda options: ref.update(
                        {"lease_until": self._now()}, option=option, **options
                    ),
                )

    def mark_published(
        self, claim: Claimed, topic: str, message_id: str, deadline: Deadline
    ) -> None:
        now = self._now()
        fields = {
            "state": PUBLISHED,
            "topic": topic,
            "message_id": message_id,
            "published_at": now,
            TTL_FIELD: now + self._ttl,
        }
        ref = self._ref(claim.webhook_id)
        self._call(deadline, lambda options: ref.update(fields, **options))

    def release(self, claim: Claimed, deadline: Deadline) -> None:
        ref = self._ref(claim.webhook_id)
        option = self._client().write_option(last_update_time=claim.token)
        # FailedPrecondition: someone took the claim over since; theirs to release, not ours.
        with contextlib.suppress(api_exceptions.FailedPrecondition):
            self._call(
                deadline,
                lambda options: ref.update({"lease_until": self._now()}, option=option, **options),
            )

    def _ref(self, webhook_id: str) -> firestore.DocumentReference:
        return self._client().collection(self._collection).document(document_id(webhook_id))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @staticmethod
    def _call(deadline: Deadline, call: Callable[[dict[str, Any]], Any]) -> Any:
        timeout = deadline.timeout(CALL_SECONDS)
        retry = Retry(
            predicate=if_transient_error, initial=0.05, maximum=0.5, multiplier=2, timeout=timeout
        )
        try:
            return call({"retry": retry, "timeout": timeout})
        except (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition):
            raise
        except api_exceptions.GoogleAPIError as exc:
            raise Unavailable(f"Firestore failed ({type(exc).__name__})") from exc


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
