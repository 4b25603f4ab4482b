"""Jobs on the fake Gemini API: batches (list, get), interactions (get), video operations (get).

Each job is held as the SDK's own type (`types.BatchJob`, the interactions `Interaction`,
`types.GenerateVideosOperation`) and sent in the wire format the SDK reads: batches and video
operations as the older camelCase long-running `Operation` (the exact inverse of the SDK's
`_BatchJob_from_mldev` and `_GenerateVideosOperation_from_mldev`), interactions as the model
serializes itself. tests/test_jobs.py checks that the SDK reads back what was put in.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

from google.genai import interactions as gi
from google.genai import types

from .fake_gemini import FakeGemini, Request

BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
VIDEO_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.PredictLongRunningResponse"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _drop_none(value: dict[str, Any]) -> dict[str, Any]:
    return {key: item for key, item in value.items() if item is not None}


class FakeJobs:
    """Install with `FakeJobs(fake)`; add jobs, change them mid-test; the SDK reads them."""

    def __init__(self, fake: FakeGemini) -> None:
        self.fake = fake
        self.batches: dict[str, types.BatchJob] = {}  # by id (the name's last segment)
        self.interactions: dict[str, gi.Interaction] = {}
        self.videos: dict[str, types.GenerateVideosOperation] = {}  # by full name
        # Set: the batch listing waits for it (at most 30 s), to hold a run mid-way.
        self.gate: threading.Event | None = None
        version = re.escape(fake.version)
        fake.route("GET", rf"/{version}/batches", self._list_batches)
        fake.route("GET", rf"/{version}/batches/(?P<id>[^/:]+)", self._get_batch)
        fake.route("GET", rf"/{version}/interactions/(?P<id>[^/:]+)", self._get_interaction)
        fake.route(
            "GET", rf"/{version}/(?P<name>(?:[^/]+/[^/]+/)?operations/[^/:]+)", self._get_video
        )

    # --- seeding -----------------------------------------------------------------------------

    def add_batch(
        self,
        batch_id: str,
        state: str = "JOB_STATE_SUCCEEDED",
        *,
        end_time: datetime | None = None,
        create_time: datetime | None = None,
        responses_file: str | None = None,
    ) -> str:
        now = datetime.now(UTC)
        name = f"batches/{batch_id}"
        self.batches[batch_id] = types.BatchJob(
            name=name,
            display_name=batch_id,
            state=types.JobState(state),
            create_time=create_time or now,
            update_time=end_time or now,
            end_time=end_time,
            model="models/gemini-3-flash",
            dest=types.BatchJobDestination(file_name=responses_file) if responses_file else None,
        )
        return name

    def add_interaction(
        self,
        interaction_id: str,
        status: str,
        *,
        updated: datetime | None = None,
        errors: list[dict[str, str]] | None = None,
        user_metadata: dict[str, Any] | None = None,
    ) -> str:
        now = datetime.now(UTC)
        self.interactions[interaction_id] = gi.Interaction.model_validate(
            _drop_none(
                {
                    "id": interaction_id,
                    "status": status,
                    "created": _time(now),
                    "updated": _time(updated or now),
                    "errors": errors,
                    "webhook_config": {"user_metadata": user_metadata} if user_metadata else None,
                }
            )
        )
        return f"interactions/{interaction_id}"

    def add_video(
        self,
        name: str,
        *,
        done: bool,
        error: dict[str, Any] | None = None,
        uri: str | None = None,
    ) -> str:
        response = None
        if uri:
            response = types.GenerateVideosResponse(
                generated_videos=[types.GeneratedVideo(video=types.Video(uri=uri))]
            )
        self.videos[name] = types.GenerateVideosOperation.model_validate(
            _drop_none({"name": name, "done": done, "error": error, "response": response})
        )
        return name

    # --- the wire ------------------------------------------------------------------------------

    @staticmethod
    def batch_wire(job: types.BatchJob) -> dict[str, Any]:
        state = job.state.name.replace("JOB_STATE_", "BATCH_STATE_") if job.state else None
        output = {"responsesFile": job.dest.file_name} if job.dest and job.dest.file_name else None
        metadata = _drop_none(
            {
                "@type": BATCH_TYPE,
                "name": job.name,
                "displayName": job.display_name,
                "model": job.model,
                "state": state,
                "createTime": _time(job.create_time),
                "updateTime": _time(job.update_time),
                "endTime": _time(job.end_time),
                "output": output,
            }
        )
        done = bool(job.state and job.state.name in types.JOB_STATES_ENDED)
        return {"name": job.name, "metadata": metadata, "done": done}

    @staticmethod
    def video_wire(operation: types.GenerateVideosOperation) -> dict[str, Any]:
        wire: dict[str, Any] = _drop_none(
            {"name": operation.name, "done": operation.done, "error": operation.error}
        )
        if operation.response is not None:
            samples = [
                {"video": _drop_none({"uri": v.video.uri, "mimeType": v.video.mime_type})}
                for v in operation.response.generated_videos or []
                if v.video is not None
            ]
            wire["response"] = {
                "@type": VIDEO_TYPE,
                "generateVideoResponse": {"generatedSamples": samples},
            }
        return wire

    def _list_batches(self, request: Request) -> tuple[int, Any]:
        size = int(request.call.query.get("pageSize") or self.fake.page_size)
        start = int(request.call.query.get("pageToken") or 0)
        # Newest first, as the API lists them (what `reconcile` stops its listing by).
        jobs = sorted(self.batches.values(), key=lambda job: job.create_time or EPOCH, reverse=True)
        if self.gate is not None:
            self.gate.wait(30)
        page = jobs[start : start + size]
        answer: dict[str, Any] = {"operations": [self.batch_wire(job) for job in page]}
        if start + size < len(jobs):
            answer["nextPageToken"] = str(start + size)
        return 200, answer

    def _get_batch(self, request: Request) -> tuple[int, Any]:
        job = self.batches.get(request.match["id"])
        if job is None:
            return _not_found("Batch")
        return 200, self.batch_wire(job)

    def _get_interaction(self, request: Request) -> tuple[int, Any]:
        found = self.interactions.get(request.match["id"])
        if found is None:
            return _not_found("Interaction")
        return 200, found

    def _get_video(self, request: Request) -> tuple[int, Any]:
        operation = self.videos.get(request.match["name"])
        if operation is None:
            return _not_found("Operation")
        return 200, self.video_wire(operation)


def _not_found(what: str) -> tuple[int, Any]:
    return 404, {"error": {"code": 404, "message": f"{what} not found.", "status": "NOT_FOUND"}}
