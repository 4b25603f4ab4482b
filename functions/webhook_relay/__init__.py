"""gemini-webhook-relay: verified, deduplicated Gemini API webhooks on Pub/Sub.

For subscribers, the public surface is `parse_event`, which reads a message the relay
published into a typed `RelayEvent` and raises `NotARelayEvent` for anything else.
For applications that start interactions or video jobs, `watch(name)` puts the job on the
safety net's watch list (see `webhook_relay.watching`).
"""

from typing import TYPE_CHECKING, Any

from .subscriber import NotARelayEvent, RelayEvent, parse_event

if TYPE_CHECKING:
    from .watching import watch

__version__ = "0.1.0"
__all__ = ["NotARelayEvent", "RelayEvent", "__version__", "parse_event", "watch"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the receive path imports this package and must not pay for it.
    if name == "watch":
        from .watching import watch  # noqa: PLC0415 (lazy on purpose)

        return watch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
