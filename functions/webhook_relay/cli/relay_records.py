"""What the relay wrote to Firestore, as the lifecycle commands read it back.

`PingWatch`: the record of a verified ping (the relay records a delivery only after its
signature verified, with the delivered type). `watch_counts`: the watch list, counted by state
with aggregation queries (jobs.py), never by reading the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import google.auth.exceptions
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from ..deadline import Deadline
from ..errors import Unavailable
from ..jobs import FirestoreJobs
from .secret_store import google_error

CALL_SECONDS = 10.0
# Records read per poll: the query is bounded whatever the delivery rate.
PING_PAGE = 200
RECORDED = ("published", "claimed")  # a claim is taken only after the signature verified


class RecordsError(Exception):
    pass


@dataclass(frozen=True)
class PingRecord:
    event_type: str
    first_seen_at: datetime


def is_ping(event_type: str) -> bool:
    return event_type == "ping" or event_type.endswith(".ping")


class PingWatch:
    """Finds a verified ping recorded at or after `since`, reading each record at most once.

    One range filter and an order on the same field (`first_seen_at`): Firestore's automatic
    single-field index serves it, so `register` needs no composite index. Each `poll` reads at
    most `page` records, continuing after the last one the previous poll read. A record that
    commits after later ones were read (its claim was slow) is passed over; `register` pings
    again every few seconds, and the next ping's record is found.
    """

    def __init__(
        self, records: RelayRecords, collection: str, since: datetime, page: int = PING_PAGE
    ) -> None:
        self._records = records
        self._collection = collection
        self._since = since
        self._page = page
        self._after: Any = None  # the last snapshot read
        self.read = 0  # records read so far, for the progress line

    def poll(self) -> PingRecord | None:
        query = (
            self._records.db()
            .collection(self._collection)
            .where(filter=FieldFilter("first_seen_at", ">=", self._since))
            .order_by("first_seen_at")
            .select(["event_type", "state", "first_seen_at"])
            .limit(self._page)
        )
        if self._after is not None:
            query = query.start_after(self._after)
        try:
            snapshots = list(query.stream(timeout=CALL_SECONDS))
        except Exception as error:
            raise RecordsError(describe(error)) from None
        self.read += len(snapshots)
        if snapshots:
            self._after = snapshots[-1]
        for snapshot in snapshots:
            record = snapshot.to_dict() or {}
            event_type = str(record.get("event_type") or "")
            if is_ping(event_type) and record.get("state") in RECORDED:
                return PingRecord(event_type, record["first_seen_at"])
        return None


class RelayRecords:
    def __init__(self, project: str) -> None:
        self._project = project
        self._client: firestore.Client | None = None

    def watch_counts(self, collection: str) -> dict[str, int]:
        """Job records by state: one aggregation query per state (jobs.FirestoreJobs.counts)."""
        # Only counts() is used: the lease and the TTL matter to claims, not to counting.
        jobs = FirestoreJobs(self.db, collection, lease_seconds=30, ttl_hours=72)
        try:
            return jobs.counts(Deadline(3 * CALL_SECONDS))
        except Unavailable as error:
            cause = error.__cause__
            raise RecordsError(describe(cause if isinstance(cause, Exception) else error)) from None
        except Exception as error:
            raise RecordsError(describe(error)) from None

    def db(self) -> firestore.Client:
        if self._client is None:
            try:
                self._client = firestore.Client(project=self._project)
            except Exception as error:
                raise RecordsError(describe(error)) from None
        return self._client


def describe(error: Exception) -> str:
    if isinstance(error, RecordsError):
        return str(error)
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return f"Firestore answered {google_error(error)}"
    if isinstance(error, api_exceptions.RetryError):
        return "Firestore did not answer in time"
    if isinstance(error, google.auth.exceptions.DefaultCredentialsError):
        return (
            "no Google credentials for Firestore: run `gcloud auth application-default login` "
            "or set GOOGLE_APPLICATION_CREDENTIALS (or FIRESTORE_EMULATOR_HOST)"
        )
    return f"Firestore failed ({type(error).__name__})"
