"""A verified Gemini envelope -> the contract's CloudEvent and Pub/Sub attributes. Pure.

Whatever the body holds, this returns an event: a body that is not a JSON object with a
string `type` becomes `relay.quarantined`, because an authentic delivery we cannot read must
still be kept (and answered 2xx, or Gemini retries it for a day and may disable the webhook).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SOURCE = "https://generativelanguage.googleapis.com"
# Types under `relay.` are the relay's own. A delivered one is an unknown Gemini type like any
# other (kind `other`); consumers tell ours apart by its data, which never holds `gemini`.
QUARANTINED = "relay.quarantined"
KINDS = frozenset({"batch", "interaction", "video"})
NON_TERMINAL = frozenset({"requires_action"})
MAX_ATTRIBUTE_BYTES = 1024  # a Pub/Sub attribute value's limit
# Pub/Sub refuses a publish request over 10 MB; the attributes (at most 21, each value at most
# 1 KB and each key far below Pub/Sub's 256 bytes: ~22 KB) and the request's framing share it
# with the data. (Pub/Sub's other attribute limit, 100 per message, is far off too.)
MAX_DATA_BYTES = 10_000_000 - 64 * 1024
# user_metadata's scalars mirrored as `um_<key>` attributes, for subscription filters.
METADATA_PREFIX = "um_"
METADATA_SKIPPED = "um_skipped"
MAX_METADATA_KEYS = 8
MAX_METADATA_VALUE_BYTES = 256
_METADATA_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_RESERVED_KEY = METADATA_SKIPPED.removeprefix(METADATA_PREFIX)
# Google's Pub/Sub protocol binding for CloudEvents, structured mode: the event is the data,
# `content-type` says so, and the core context attributes are mirrored as `ce-*`.
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
_MIRRORED = ("specversion", "id", "source", "type", "time", "subject")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True)
class Event:
    type: str
    subject: str | None
    cloudevent: dict[str, Any]
    quarantined: bool
    encoded: bytes  # the message data: `cloudevent` serialized once, in `normalize`

    def data(self) -> bytes:
        return self.encoded

    @property
    def ping(self) -> bool:
        # WebhookService's ping has no documented body: any type `ping` or ending in `.ping`.
        return not self.quarantined and (self.type == "ping" or self.type.endswith(".ping"))

    def attributes(self) -> dict[str, str]:
        attributes = {
            "event_type": self.type,
            "webhook_id": self.cloudevent["id"],
            "signature": self.cloudevent["signature"],
            "content-type": CONTENT_TYPE,
        }
        for name in _MIRRORED:
            value = self.cloudevent.get(name)
            # An id too long for an attribute stays in the event (`subject`, `job_id`): the
            # message must still be publishable, or the delivery would be refused on every retry.
            if value is not None and len(value.encode()) <= MAX_ATTRIBUTE_BYTES:
                attributes[f"ce-{name}"] = value
        if "ce-subject" in attributes:
            attributes["subject"] = attributes["ce-subject"]
        if not self.quarantined:
            _mirror_metadata(self.cloudevent["data"]["user_metadata"], attributes)
        return attributes


def _mirror_metadata(metadata: Any, attributes: dict[str, str]) -> None:
    """The contract's `um_<key>` attributes: at most 8 scalars in the delivered JSON's key order
    (json keeps it), the rest named in `um_skipped`."""
    if not isinstance(metadata, dict) or not metadata:
        return
    mirrored = 0
    skipped: list[str] = []
    for key, value in metadata.items():
        text = _scalar_text(value) if mirrored < MAX_METADATA_KEYS else None
        # `skipped` would be mirrored onto `um_skipped` itself: it is always skipped instead.
        if text is None or _METADATA_KEY.fullmatch(key) is None or key == _RESERVED_KEY:
            skipped.append(key)
        else:
            attributes[METADATA_PREFIX + key] = text
            mirrored += 1
    if skipped:
        attributes[METADATA_SKIPPED] = _names_that_fit(skipped)


def _scalar_text(value: Any) -> str | None:
    # The value's JSON text, as json.dumps writes it (`true`, `3`, `2.5`, `1e+100`), without
    # its per-call cost: json writes ints with int.__repr__, finite floats with float.__repr__.
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):  # json.loads gave only finite floats
        text = repr(value)
    else:
        return None  # null, objects, arrays
    # Checked on the text for numbers too: Python reads a 4000-digit integer from JSON, and an
    # attribute over Pub/Sub's 1 KB limit would make the message unpublishable.
    if len(text) > MAX_METADATA_VALUE_BYTES or len(text.encode()) > MAX_METADATA_VALUE_BYTES:
        return None
    return text


def _names_that_fit(names: list[str]) -> str:
    """Comma-separated, cut after the last whole name within Pub/Sub's 1 KB attribute limit; a
    first name longer than that alone is cut at a character boundary, so a skip is never
    silent. (Every name has a UTF-8 form: the event was encoded before attributes are asked.)"""
    size, count = -1, 0
    for name in names:
        size += 1 + len(name.encode())
        if size > MAX_ATTRIBUTE_BYTES:
            break
        count += 1
    if count == 0:
        return names[0].encode()[:MAX_ATTRIBUTE_BYTES].decode(errors="ignore")
    return ",".join(names[:count])


def normalize(webhook_id: str, timestamp: int, body: bytes, signature: str) -> Event:
    envelope, problem = _envelope(body)
    if envelope is None:
        return _quarantine(webhook_id, timestamp, body, signature, problem)

    event_type: str = envelope["type"]
    payload = envelope.get("data")
    fields: dict[str, Any] = payload if isinstance(payload, dict) else {}
    subject = _identifier(fields.get("id"))
    family, dot, _ = event_type.partition(".")
    outcome = event_type.rpartition(".")[2]
    cloudevent = _cloudevent(
        webhook_id, event_type, subject, _time(envelope.get("timestamp"), timestamp), signature
    )
    cloudevent["data"] = {
        # `batch` alone is no batch event: routing's `batch.*` does not match it either.
        "kind": family if dot and family in KINDS else "other",
        "outcome": outcome,
        "terminal": outcome not in NON_TERMINAL,
        "job_id": subject,
        # The docs name it output_file_uri; Google's cookbook receiver reads video_uri.
        "output_uri": _text(fields.get("output_file_uri")) or _text(fields.get("video_uri")),
        "file_name": _text(fields.get("file_name")),
        "error": _error(fields),
        "user_metadata": _user_metadata(envelope, fields),
        "gemini": envelope,
    }
    # Whatever cannot be encoded or published would be answered 503 on every retry, for 24 h:
    # an authentic delivery we cannot publish as read is kept, quarantined, instead.
    try:
        encoded = _encode(cloudevent)
    except UnicodeEncodeError:
        # An unpaired surrogate (the escape `"\ud800"`, or its raw bytes, which json reads
        # with `surrogatepass`) is a string with no UTF-8 form.
        return _quarantine(webhook_id, timestamp, body, signature, "body has an unpaired surrogate")
    except RecursionError:  # read at a depth the encoder, three levels deeper, cannot reach
        return _quarantine(webhook_id, timestamp, body, signature, "body nests too deeply")
    if len(encoded) > MAX_DATA_BYTES:  # `data.id` and the envelope are copied into the event
        return _quarantine(webhook_id, timestamp, body, signature, "too_large")
    return Event(event_type, subject, cloudevent, quarantined=False, encoded=encoded)


def _quarantine(webhook_id: str, timestamp: int, body: bytes, signature: str, reason: str) -> Event:
    cloudevent = _cloudevent(webhook_id, QUARANTINED, None, _unix_time(timestamp), signature)
    cloudevent["data"] = {"reason": reason, "body_base64": ""}
    # Cut the body to what fits (base64 is 4 bytes per 3); the configurable body limit keeps
    # this from happening to any body that is not JSON (config.MAX_BODY_BYTES_LIMIT).
    room = (MAX_DATA_BYTES - len(_encode(cloudevent))) // 4 * 3
    if len(body) > room:
        cloudevent["data"]["reason"] = "too_large"
        body = body[:room]
    cloudevent["data"]["body_base64"] = base64.b64encode(body).decode("ascii")
    return Event(QUARANTINED, None, cloudevent, quarantined=True, encoded=_encode(cloudevent))


def _encode(cloudevent: dict[str, Any]) -> bytes:
    return json.dumps(cloudevent, ensure_ascii=False, separators=(",", ":")).encode()


def _envelope(body: bytes) -> tuple[dict[str, Any] | None, str]:
    if not body:
        return None, "empty body"
    try:
        # NaN, Infinity and numbers overflowing a float are read by Python's json but are not
        # JSON: republished, they would make an event subscribers' parsers refuse.
        envelope = json.loads(body, parse_constant=_not_json, parse_float=_finite_float)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting depth
        return None, "body is not JSON"
    if not isinstance(envelope, dict):
        return None, "body is not a JSON object"
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not event_type.strip():
        return None, "body has no string 'type'"
    if len(event_type.encode(errors="surrogatepass")) > MAX_ATTRIBUTE_BYTES:  # an attribute
        return None, f"body 'type' is longer than {MAX_ATTRIBUTE_BYTES} bytes"
    return envelope, ""


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _cloudevent(
    webhook_id: str, event_type: str, subject: str | None, time: str, signature: str
) -> dict[str, Any]:
    cloudevent: dict[str, Any] = {
        "specversion": "1.0",
        "id": webhook_id,
        "source": SOURCE,
        "type": event_type,
    }
    if subject is not None:
        cloudevent["subject"] = subject
    cloudevent |= {"time": time, "datacontenttype": "application/json", "signature": signature}
    return cloudevent


def _identifier(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error(fields: dict[str, Any]) -> dict[str, Any] | None:
    nested = fields.get("error")
    if isinstance(nested, dict) and ("code" in nested or "message" in nested):
        return {"code": nested.get("code"), "message": nested.get("message")}
    if isinstance(nested, str) and nested:
        return {"code": fields.get("error_code"), "message": nested}
    if "error_code" in fields or "error_message" in fields:
        return {"code": fields.get("error_code"), "message": fields.get("error_message")}
    return None


def _user_metadata(envelope: dict[str, Any], fields: dict[str, Any]) -> Any:
    # Where Gemini puts it is undocumented: the top level first, then inside `data`.
    for holder in (envelope, fields):
        if holder.get("user_metadata") is not None:
            return holder["user_metadata"]
    return None


def _time(value: Any, fallback: int) -> str:
    if not isinstance(value, str):
        return _unix_time(fallback)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return _unix_time(fallback)
    if parsed.tzinfo is None:  # RFC 3339 needs an offset; guessing one would be a lie
        return _unix_time(fallback)
    if _RFC3339.fullmatch(value):
        return value  # already RFC 3339: keep its precision as delivered
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _unix_time(timestamp: int) -> str:
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        moment = datetime.fromtimestamp(0, UTC)
    return moment.isoformat().replace("+00:00", "Z")
