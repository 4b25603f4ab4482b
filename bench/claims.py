"""Row 6: 20 concurrent claims of one new `webhook-id` on the Firestore emulator, as a
read-then-write transaction vs as the relay does it (`create()` first, a plain get for the
losers), to check claim.py's note that transactions took over 10 s for 20 of them."""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from bench.e2e import COLLECTION
from bench.table import Row, times
from webhook_relay.claim import CLAIMED, Claimed, Duplicate, FirestoreClaims, InFlight, document_id
from webhook_relay.deadline import Deadline

CONTENDERS = 20
LEASE = timedelta(seconds=30)


def _record(webhook_id: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "webhook_id": webhook_id,
        "state": CLAIMED,
        "lease_until": now + LEASE,
        "attempts": 1,
        "first_seen_at": now,
    }


def transactional_claim(db: firestore.Client, webhook_id: str) -> str:
    """The read-then-write design: in a transaction, get; absent: create; a released claim:
    update (take over); a live one: nothing to write, another request has it."""
    ref = db.collection(COLLECTION).document(document_id(webhook_id))

    @firestore.transactional
    def claim(transaction: firestore.Transaction) -> str:
        snapshot = ref.get(transaction=transaction)
        if not snapshot.exists:
            transaction.create(ref, _record(webhook_id))
            return "claimed"
        current = snapshot.to_dict() or {}
        if current.get("lease_until", datetime.min.replace(tzinfo=UTC)) > datetime.now(UTC):
            return "in_flight"
        transaction.update(ref, {"state": CLAIMED, "lease_until": datetime.now(UTC) + LEASE})
        return "claimed"

    return str(claim(db.transaction()))


def relay_claim(claims: FirestoreClaims, webhook_id: str) -> str:
    result = claims.claim(webhook_id, "batch.succeeded", None, Deadline(60))
    if isinstance(result, Claimed):
        return "claimed"
    if isinstance(result, InFlight):
        return "in_flight"
    if isinstance(result, Duplicate):
        return "duplicate"
    return "other"


def contend(claim: Callable[[str], str]) -> tuple[list[float], Counter[str]]:
    """CONTENDERS threads claim one new id at once; each one's wall time and answer."""
    webhook_id = "msg_" + secrets.token_hex(12)
    start = threading.Barrier(CONTENDERS)
    walls: list[float] = []
    answers: list[str] = []

    def one() -> None:
        start.wait()
        started = time.perf_counter()
        try:
            answer = claim(webhook_id)
        except Exception as error:
            answer = f"error {type(error).__name__}: {error}"
        walls.append(time.perf_counter() - started)
        answers.append(answer)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(CONTENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return walls, Counter(answers)


def run(db: firestore.Client, rounds: int) -> list[Row]:
    claims = FirestoreClaims(lambda: db, COLLECTION, lease_seconds=30, ttl_hours=72)
    sides: dict[str, Callable[[str], str]] = {
        "transaction": lambda webhook_id: transactional_claim(db, webhook_id),
        "relay": lambda webhook_id: relay_claim(claims, webhook_id),
    }
    maxima: dict[str, list[float]] = {name: [] for name in sides}
    medians: dict[str, list[float]] = {name: [] for name in sides}
    answers: dict[str, Counter[str]] = {name: Counter() for name in sides}
    for claim in sides.values():  # warm-up: channel and first transaction
        contend(claim)
    for _ in range(rounds):
        for name, claim in sides.items():
            walls, counted = contend(claim)
            maxima[name].append(max(walls))
            medians[name].append(statistics.median(walls))
            answers[name].update(counted)

    def show(name: str) -> str:
        return (
            f"max {statistics.median(maxima[name]):.2f} s (worst round "
            f"{max(maxima[name]):.2f} s), median {statistics.median(medians[name]) * 1000:.0f} ms"
        )

    ratio = statistics.median(maxima["transaction"]) / statistics.median(maxima["relay"])
    return [
        Row(
            "6",
            f"{CONTENDERS} concurrent claims of one new id (Firestore emulator)",
            show("relay"),
            show("transaction"),
            "transaction max ÷ ours: " + times(ratio, 1),
            "—",
            None,
            f"{rounds} rounds each, interleaved; medians over rounds of each round's max and "
            "median wall time of the 20. ours: `FirestoreClaims.claim` (create(), losers "
            "get); reference: `@firestore.transactional` get then create/update (5 attempts). "
            f"Answers: ours {dict(answers['relay'])}; transaction "
            f"{dict(answers['transaction'])}",
        )
    ]
