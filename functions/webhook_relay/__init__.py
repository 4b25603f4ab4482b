"""gemini-webhook-relay: verified, deduplicated Gemini API webhooks on Pub/Sub.

For subscribers, the public surface is `parse_event`, which reads a message the relay
published into a typed `RelayEvent` and raises `NotARelayEvent` for anything else.
"""

from .subscriber import NotARelayEvent, RelayEvent, parse_event

__version__ = "0.1.0"
__all__ = ["NotARelayEvent", "RelayEvent", "__version__", "parse_event"]
