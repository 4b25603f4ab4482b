"""gemini-webhook-relay: verified, deduplicated Gemini API webhooks on Pub/Sub."""

__version__ = "0.1.0"
