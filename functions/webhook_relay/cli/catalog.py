"""Gemini's webhook event catalog, with sample `data` for each type (`webhook-relay send`).

From Google's documentation (see docs/gemini-webhooks.md, section 4). The samples use fresh
ids, so two sends of the same type are two different jobs.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

BUCKET = "gs://my-bucket"


def _batch_succeeded(job: str) -> dict[str, Any]:
    return {"id": job, "output_file_uri": f"{BUCKET}/batches/{job}/results.jsonl"}


def _failed(job: str) -> dict[str, Any]:
    return {"id": job, "error_code": "INTERNAL", "error_message": "sample failure"}


def _id_only(job: str) -> dict[str, Any]:
    return {"id": job}


def _video_generated(job: str) -> dict[str, Any]:
    return {
        "id": job,
        "output_file_uri": f"{BUCKET}/videos/{job}.mp4",
        "file_name": f"files/{job}",
    }


# type -> (job id prefix, sample data for a job id). Order: the documentation's.
CATALOG: Mapping[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "batch.succeeded": ("batch_", _batch_succeeded),
    "batch.failed": ("batch_", _failed),
    "batch.expired": ("batch_", _id_only),
    "batch.cancelled": ("batch_", _id_only),
    "interaction.requires_action": ("interaction_", _id_only),
    "interaction.completed": ("interaction_", _id_only),
    "interaction.failed": ("interaction_", _failed),
    "interaction.cancelled": ("interaction_", _id_only),
    "video.generated": ("video_", _video_generated),
}
EVENT_TYPES = tuple(CATALOG)


def sample_data(event_type: str, job_id: str | None = None) -> dict[str, Any]:
    """Sample `data` for a catalog type; `KeyError` for a type outside the catalog."""
    prefix, make = CATALOG[event_type]
    return make(job_id or prefix + secrets.token_hex(6))


def envelope(
    event_type: str, data: Mapping[str, Any], timestamp: datetime | None = None
) -> dict[str, Any]:
    """The "thin" envelope Gemini delivers."""
    moment = (timestamp or datetime.now(UTC)).astimezone(UTC)
    return {
        "type": event_type,
        "version": "v1",
        "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": dict(data),
    }
