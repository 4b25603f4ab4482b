"""What the relay wrote to Firestore, as the lifecycle commands read it back.

`find_ping`: the record of a verified ping (the relay records a delivery only after its
signature verified). `watch_counts`: the watch list, counted by state.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from datetime import datetime

import google.auth.exceptions
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from ..normalize import QUARANTINED
from .secret_store import google_error

CALL_SECONDS = 10.0


class RecordsError(Exception):
    pass


@dataclass(frozen=True)
class PingRecord:
    event_type: str
    first_seen_at: datetime

    @property
    def quarantined(self) -> bool:
        # A relay that predates ping handling verifies the ping, then quarantines its body.
        return self.event_type == QUARANTINED


def is_ping(event_type: str) -> bool:
    return event_type == "ping" or event_type.endswith(".ping")


class RelayRecords:
    def __init__(self, project: str) -> None:
        self._project = project
        self._client: firestore.Client | None = None

    def find_ping(self, collection: str, since: datetime) -> PingRecord | None:
        """A verified ping (or a quarantined body: a relay without ping support) seen `since`.

        One range filter on one field: Firestore's automatic single-field index serves it, so
        no composite index has to be deployed for `register`.
        """
        query = (
            self._db()
            .collection(collection)
            .where(filter=FieldFilter("first_seen_at", ">=", since))
        )
        fallback = None
        try:
            for snapshot in query.stream(timeout=CALL_SECONDS):
                record = snapshot.to_dict() or {}
                found = PingRecord(str(record.get("event_type") or ""), record["first_seen_at"])
                if is_ping(found.event_type):
                    return found
                if found.quarantined and fallback is None:
                    fallback = found
        except Exception as error:
            raise RecordsError(describe(error)) from None
        return fallback

    def watch_counts(self, collection: str) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        try:
            for snapshot in (
                self._db().collection(collection).select(["state"]).stream(timeout=CALL_SECONDS)
            ):
                counts[str((snapshot.to_dict() or {}).get("state") or "unknown")] += 1
        except Exception as error:
            raise RecordsError(describe(error)) from None
        return dict(sorted(counts.items()))

    def _db(self) -> firestore.Client:
        if self._client is None:
            try:
                self._client = firestore.Client(project=self._project)
            except Exception as error:
                raise RecordsError(describe(error)) from None
        return self._client


def describe(error: Exception) -> str:
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
