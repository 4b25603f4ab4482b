"""`GeminiJobs` through the official google-genai SDK: webhooks, batches, interactions, videos.

Only `reconcile` imports this module. The client makes one attempt per call (no SDK retries, a
short timeout): a failing or rate-limited API is logged and retried by the next run, and a run
stays inside its time budget.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

import google.genai
from google.genai import types

from .deadline import Deadline
from .gemini import api_key, api_version, base_url
from .reconcile import API_CALL_SECONDS, ApiFailure, JobView, WebhookView

CALL_TIMEOUT_MS = int(API_CALL_SECONDS * 1000)
PAGE_SIZE = 100
MAX_WEBHOOK_PAGES = 20  # of PAGE_SIZE: a bound on a list that should hold a handful
T = TypeVar("T")

# The SDK's JobState names -> the Gemini event's last part.
BATCH_TERMINAL = {
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
# `requires_action` waits for the caller and is never synthesized; the rest are still running.
INTERACTION_TERMINAL = frozenset(
    {"completed", "failed", "cancelled", "incomplete", "budget_exceeded"}
)
_FILE_IN_URI = re.compile(r"/(files/[^/:?]+)")


def client_for_reconcile(env: Mapping[str, str]) -> google.genai.Client:
    """Like `gemini.client_from_env`, but one attempt per call: the next run is the retry."""
    return client_for_key(env, api_key(env))


def client_for_key(env: Mapping[str, str], key: str) -> google.genai.Client:
    return google.genai.Client(
        api_key=key,
        http_options=types.HttpOptions(
            base_url=base_url(env),
            api_version=api_version(env),
            timeout=CALL_TIMEOUT_MS,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


class SdkGeminiJobs:
    def __init__(
        self,
        client: google.genai.Client,
        page_size: int = PAGE_SIZE,
        max_webhook_pages: int = MAX_WEBHOOK_PAGES,
    ) -> None:
        self._client = client
        self._page_size = page_size
        self._max_webhook_pages = max_webhook_pages

    def webhooks(self, deadline: Deadline) -> list[WebhookView]:
        found: list[WebhookView] = []
        token: str | None = None
        for _ in range(self._max_webhook_pages):
            if deadline.remaining() < CALL_TIMEOUT_MS / 1000:
                raise ApiFailure("the webhook list was cut short by the run's time budget")
            page = _call(
                lambda token=token: self._client.webhooks.list(  # type: ignore[misc]
                    page_size=self._page_size, page_token=token, timeout=CALL_TIMEOUT_MS / 1000
                )
            )
            for hook in page.webhooks or []:
                found.append(
                    WebhookView(
                        id=hook.id or (hook.name or "").rpartition("/")[2],
                        name=hook.name,
                        uri=hook.uri,
                        state=str(hook.state or "enabled"),
                    )
                )
            token = page.next_page_token
            if not token:
                return found
        raise ApiFailure(f"the webhook list did not end within {self._max_webhook_pages} pages")

    def enable_webhook(self, webhook: WebhookView) -> None:
        _call(
            lambda: self._client.webhooks.update(
                webhook.id,
                state="enabled",
                update_mask="state",
                timeout=CALL_TIMEOUT_MS / 1000,
            )
        )

    def batch_pages(self) -> Iterator[list[JobView]]:
        pager = _call(lambda: self._client.batches.list(config={"page_size": self._page_size}))
        while True:
            yield [_batch(job) for job in pager.page]
            if not pager.config.get("page_token"):  # the SDK's own test for another page
                return
            _call(pager.next_page)

    def get(self, kind: str, name: str) -> JobView:
        if kind == "batch":
            full = name if name.startswith("batches/") else f"batches/{name}"
            return _batch(_call(lambda: self._client.batches.get(name=full)))
        if kind == "interaction":
            interaction_id = name.rpartition("/")[2]
            found = _call(
                lambda: self._client.interactions.get(
                    interaction_id, timeout=CALL_TIMEOUT_MS / 1000
                )
            )
            return _interaction(name, found)
        if kind == "video":
            operation = types.GenerateVideosOperation.model_validate({"name": name})
            return _video(_call(lambda: self._client.operations.get(operation)))
        raise ApiFailure(f"no job kind {kind!r}")


def _call(call: Callable[[], T]) -> T:
    try:
        return call()
    except ApiFailure:
        raise
    except Exception as exc:  # the SDK's errors, httpx's, pydantic's: one line each, no stack
        code = getattr(exc, "code", None) or getattr(exc, "status_code", None)
        detail = f"{type(exc).__name__} {code}" if code else type(exc).__name__
        raise ApiFailure(detail, rate_limited=code == 429) from exc


def _batch(job: types.BatchJob) -> JobView:
    state = job.state.name if job.state is not None else ""
    outcome = BATCH_TERMINAL.get(state, state.removeprefix("JOB_STATE_").lower() or "unknown")
    output = job.dest.file_name if job.dest is not None else None
    error = None
    if job.error is not None:  # the SDK maps it for Vertex only; kept for when it does
        error = {"code": job.error.code, "message": job.error.message}
    return JobView(
        kind="batch",
        name=job.name or "",
        state=outcome,
        terminal=state in BATCH_TERMINAL,
        ended_at=job.end_time,
        created_at=job.create_time,
        output_uri=output,
        file_name=output,
        error=error,
    )


def _interaction(name: str, found: Any) -> JobView:
    status = str(found.status)
    errors = found.errors or []
    error = {"code": errors[0].code, "message": errors[0].message} if errors else None
    config = found.webhook_config
    # What a delivery carries in `data.id`: the bare id (the Interactions API names an
    # interaction by its id alone), so a subscriber sees one job whichever path published.
    return JobView(
        kind="interaction",
        name=found.id or name.rpartition("/")[2],
        state=status,
        terminal=status in INTERACTION_TERMINAL,
        ended_at=_parse_time(found.updated),
        created_at=_parse_time(found.created),
        error=error,
        user_metadata=config.user_metadata if config is not None else None,
    )


def _video(operation: types.GenerateVideosOperation) -> JobView:
    name = operation.name or ""
    if not operation.done:
        return JobView("video", name, "running", terminal=False)
    if operation.error:
        error = {"code": operation.error.get("code"), "message": operation.error.get("message")}
        return JobView("video", name, "failed", terminal=True, error=error)
    uri = None
    response = operation.response or operation.result
    for generated in (response.generated_videos or []) if response else []:
        if generated.video is not None and generated.video.uri:
            uri = generated.video.uri
            break
    match = _FILE_IN_URI.search(uri or "")
    return JobView(
        "video",
        name,
        "generated",
        terminal=True,
        output_uri=uri,
        file_name=match.group(1) if match else None,
    )


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
