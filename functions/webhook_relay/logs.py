"""One JSON object per line on stdout: Cloud Logging reads it as a structured entry.

`severity`, `message` and `logging.googleapis.com/trace` are the keys Cloud Logging lifts
into the entry itself; the rest lands in `jsonPayload`, where log-based metrics filter on
`jsonPayload.status`. Nothing here ever receives a secret, a signature or a whole body.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .trace import TRACE_KEY, Headers, context

__all__ = ["TRACE_KEY", "JsonHandler", "bound", "configure", "emit", "trace"]

_write_lock = threading.Lock()
# Fields every line written through JsonHandler carries in this context (see `bound`).
_bound: ContextVar[Mapping[str, Any] | None] = ContextVar("webhook_relay_log_fields", default=None)
# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def emit(severity: str, message: str, **fields: Any) -> None:
    entry = {"severity": severity, "message": message}
    entry.update((key, value) for key, value in fields.items() if value is not None)
    # ASCII with escapes: a line is then writable to any stdout, even holding text with no
    # UTF-8 form (an unpaired surrogate). emit runs outside the answer's error handling, so
    # a UnicodeEncodeError here would escape `handle` as a 500.
    line = json.dumps(entry, ensure_ascii=True, default=str)
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def trace(headers: Headers, project: str | None) -> str | None:
    """The Cloud Trace resource name of this request, from W3C or Google's own header."""
    if project is None:
        return None
    found = context(headers)
    return f"projects/{project}/traces/{found.trace_id}" if found else None


@contextmanager
def bound(fields: Mapping[str, Any]) -> Iterator[None]:
    """Add `fields` to every record JsonHandler writes from this thread (context) meanwhile:
    a subscriber's handler logs under its message's trace without passing it along."""
    token = _bound.set({**(_bound.get() or {}), **fields})
    try:
        yield
    finally:
        _bound.reset(token)


class JsonHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(_bound.get() or {})
        fields.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:  # Error Reporting groups entries by their `stack_trace`
            fields["stack_trace"] = logging.Formatter().formatException(record.exc_info)
        severity = "CRITICAL" if record.levelno >= logging.CRITICAL else record.levelname
        emit(severity, record.getMessage(), logger=record.name, **fields)


def configure() -> None:
    root = logging.getLogger()
    if not any(isinstance(handler, JsonHandler) for handler in root.handlers):
        root.addHandler(JsonHandler())
    root.setLevel(logging.INFO)
