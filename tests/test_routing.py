"""Event type -> topic: exact, then the longest `prefix.*`, then `*`, else unrouted."""

from __future__ import annotations

import json

import pytest

from webhook_relay.routing import Routes, default_routes, parse_routes, valid_topic_id

TABLE = {
    "*": "all-events",
    "batch.*": "batches",
    "batch.failed.*": "batch-failures",
    "batch.succeeded": "batch-successes",
}


def routes(table: dict[str, str], prefix: str = "gemini-") -> Routes:
    return parse_routes(json.dumps(table), prefix)


def test_exact_type_beats_prefix_and_star() -> None:
    assert routes(TABLE).topic_for("batch.succeeded") == "batch-successes"


def test_longest_prefix_beats_shorter_prefix() -> None:
    assert routes(TABLE).topic_for("batch.failed.quota") == "batch-failures"


def test_longest_prefix_wins_whatever_the_table_order() -> None:
    table = {"batch.failed.*": "batch-failures", "batch.*": "batches"}
    assert routes(table).topic_for("batch.failed.quota") == "batch-failures"
    assert routes(dict(reversed(table.items()))).topic_for("batch.failed.quota") == (
        "batch-failures"
    )


def test_prefix_beats_star() -> None:
    assert routes(TABLE).topic_for("batch.expired") == "batches"


def test_star_catches_what_nothing_else_matches() -> None:
    assert routes(TABLE).topic_for("video.generated") == "all-events"


def test_unmatched_goes_to_unrouted() -> None:
    assert routes({"batch.*": "batches"}, prefix="p-").topic_for("video.generated") == "p-unrouted"


def test_prefix_pattern_needs_the_dot() -> None:
    table = {"batch.*": "batches"}
    assert routes(table).topic_for("batchy.succeeded") == "gemini-unrouted"
    assert routes(table).topic_for("batch") == "gemini-unrouted"


def test_default_table() -> None:
    table = parse_routes(None, "gemini-")
    assert table.patterns == {
        "batch.*": "gemini-batch",
        "interaction.*": "gemini-interaction",
        "video.*": "gemini-video",
    }
    assert table.topic_for("batch.succeeded") == "gemini-batch"
    assert table.topic_for("interaction.requires_action") == "gemini-interaction"
    assert table.topic_for("video.generated") == "gemini-video"
    assert table.topic_for("ping") == "gemini-unrouted"


def test_blank_relay_routes_is_the_default_table() -> None:
    assert parse_routes("  ", "x-").patterns == default_routes("x-")


def test_relay_routes_replaces_the_default_table() -> None:
    assert routes({"video.*": "videos"}).topic_for("batch.succeeded") == "gemini-unrouted"


def test_topics_lists_every_target_and_unrouted() -> None:
    assert routes(TABLE).topics() == sorted([*set(TABLE.values()), "gemini-unrouted"])


@pytest.mark.parametrize("topic", ["abc", "a" * 255, "Topic-1_2.3~4+5%6"])
def test_valid_topic_id(topic: str) -> None:
    assert valid_topic_id(topic)


@pytest.mark.parametrize("topic", ["ab", "a" * 256, "1abc", "goog-x", "GOOGx", "a/b", ""])
def test_invalid_topic_id(topic: str) -> None:
    assert not valid_topic_id(topic)
