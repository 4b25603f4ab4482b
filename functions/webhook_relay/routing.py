"""Event type -> Pub/Sub topic id. Pure.

Matching order: an exact type, then the longest `prefix.*` pattern, then `*`; anything left
(and every quarantined body) goes to the unrouted topic, so nothing verified is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError

DEFAULT_TOPIC_PREFIX = "gemini-"
DEFAULT_FAMILIES = ("batch", "interaction", "video")
UNROUTED = "unrouted"

# Pub/Sub's rule for topic ids; "goog" is reserved.
_TOPIC_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_PATTERN = re.compile(r"\*|[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*(\.\*)?")


def default_routes(prefix: str = DEFAULT_TOPIC_PREFIX) -> dict[str, str]:
    return {f"{family}.*": f"{prefix}{family}" for family in DEFAULT_FAMILIES}


def unrouted_topic(prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    return f"{prefix}{UNROUTED}"


@dataclass(frozen=True)
class Routes:
    exact: Mapping[str, str]
    # (prefix with its trailing dot, topic), longest prefix first.
    prefixes: tuple[tuple[str, str], ...]
    fallback: str | None
    unrouted: str
    patterns: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, str], unrouted: str) -> Routes:
        exact: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        fallback: str | None = None
        for pattern, topic in table.items():
            if pattern == "*":
                fallback = topic
            elif pattern.endswith(".*"):
                prefixes.append((pattern[:-1], topic))
            else:
                exact[pattern] = topic
        prefixes.sort(key=lambda entry: len(entry[0]), reverse=True)
        return cls(exact, tuple(prefixes), fallback, unrouted, dict(table))

    def topic_for(self, event_type: str) -> str:
        if event_type in self.exact:
            return self.exact[event_type]
        for prefix, topic in self.prefixes:
            if event_type.startswith(prefix):
                return topic
        return self.fallback or self.unrouted

    def topics(self) -> list[str]:
        """Every topic this table can publish to, the unrouted one included."""
        return sorted({*self.patterns.values(), self.unrouted})


def parse_routes(raw: str | None, prefix: str) -> Routes:
    """Read `RELAY_ROUTES` (a JSON object), or the default table when it is unset or blank."""
    unrouted = unrouted_topic(prefix)
    if raw is None or not raw.strip():
        return Routes.from_table(default_routes(prefix), unrouted)
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError("RELAY_ROUTES", f"not valid JSON ({exc.msg})") from None
    if not isinstance(table, dict) or not table:
        raise ConfigError("RELAY_ROUTES", "must be a non-empty JSON object of pattern -> topic id")
    for pattern, topic in table.items():
        if not _PATTERN.fullmatch(pattern):
            raise ConfigError(
                "RELAY_ROUTES", f"pattern {pattern!r} is not an event type, 'prefix.*' or '*'"
            )
        if not isinstance(topic, str) or not valid_topic_id(topic):
            raise ConfigError("RELAY_ROUTES", f"topic for {pattern!r} is not a valid topic id")
    return Routes.from_table(table, unrouted)


def valid_topic_id(topic: str) -> bool:
    return bool(_TOPIC_ID.fullmatch(topic)) and not topic.lower().startswith("goog")
