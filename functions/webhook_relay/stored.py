"""What a Firestore record keeps of a delivered string: all of it, or a prefix and its hash.

Firestore refuses a document over 1 MiB and an index entry over 7.5 KiB, and refuses it with
`InvalidArgument` on every retry: an authentic delivery whose `data.id` is 1 MB long would be
answered 503 for 24 hours. Records are for finding and reading, never for rebuilding an
event, so a long value is cut to a readable prefix plus the SHA-256 of the whole value: two
different long values never store the same text, and the same value always stores the same.
"""

from __future__ import annotations

import hashlib

MAX_BYTES = 512
_PREFIX_BYTES = MAX_BYTES - len("…sha256:") - 64 - 4


def capped(value: str) -> str:
    """`value` when its UTF-8 form fits in `MAX_BYTES`, else a prefix and its hash. A lone
    surrogate (JSON allows `"\\ud800"`, UTF-8 and so Firestore do not) counts as too long."""
    encoded = value.encode("utf-8", "surrogatepass")
    if _encodable(value, len(encoded)):
        return value
    prefix = encoded[:_PREFIX_BYTES].decode("utf-8", "ignore")
    return f"{prefix}…sha256:{hashlib.sha256(encoded).hexdigest()}"


def _encodable(value: str, size: int) -> bool:
    if size > MAX_BYTES:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def capped_or_none(value: str | None) -> str | None:
    return None if value is None else capped(value)
