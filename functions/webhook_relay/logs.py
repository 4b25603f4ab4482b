"""One JSON object per line on stdout: Cloud Logging reads it as a structured entry.

`severity`, `message` and `logging.googleapis.com/trace` are the keys Cloud Logging lifts
into the entry itself; the rest lands in `jsonPayload`, where log-based metrics filter on
`jsonPayload.status`. Nothing here ever receives a secret, a signature or a whole body.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from typing import Any

from .verify import Headers

TRACE_KEY = "logging.googleapis.com/trace"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(/.*)?")
_write_lock = threading.Lock()
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
    match = _TRACEPARENT.fullmatch((headers.get("traceparent") or "").strip())
    if match is None:
        match = _CLOUD_TRACE.fullmatch((headers.get("X-Cloud-Trace-Context") or "").strip())
    return f"projects/{project}/traces/{match.group(1).lower()}" if match else None


class JsonHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if record.exc_info:  # Error Reporting groups entries by their `stack_trace`
            fields["stack_trace"] = logging.Formatter().formatException(record.exc_info)
        severity = "CRITICAL" if record.levelno >= logging.CRITICAL else record.levelname
        emit(severity, record.getMessage(), logger=record.name, **fields)


def configure() -> None:
    root = logging.getLogger()
    if not any(isinstance(handler, JsonHandler) for handler in root.handlers):
        root.addHandler(JsonHandler())
    root.setLevel(logging.INFO)
