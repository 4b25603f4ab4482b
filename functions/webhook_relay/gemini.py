"""A `google-genai` client from the environment, for `reconcile` and the lifecycle commands.

Only those import this module: `receive_webhook` never pays for the SDK.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import google.genai
from google.genai import _interactions_errors as sdk_errors
from google.genai import types
from google.genai import webhooks as gw

from .config import is_loopback
from .errors import ConfigError

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
# Named explicitly: the SDK's own default moved from v1beta to v1 in 3.x.
DEFAULT_API_VERSION = "v1"
TIMEOUT_MS = 30_000


def client_from_env(env: Mapping[str, str], retry: bool = True) -> google.genai.Client:
    """`retry=False`: one attempt, for a call that must not be repeated blindly (a create
    whose answer was lost would otherwise make a second webhook)."""
    return google.genai.Client(
        api_key=api_key(env),
        http_options=types.HttpOptions(
            base_url=base_url(env),
            api_version=api_version(env),
            timeout=TIMEOUT_MS,
            retry_options=None if retry else types.HttpRetryOptions(attempts=1),
        ),
    )


def api_key(env: Mapping[str, str]) -> str:
    key = env.get("GEMINI_API_KEY", "").strip()
    path = env.get("GEMINI_API_KEY_FILE", "").strip()
    if key and path:
        raise ConfigError("GEMINI_API_KEY", "set it or GEMINI_API_KEY_FILE, not both")
    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError("GEMINI_API_KEY_FILE", f"cannot read the file ({reason})") from None
        if not key:
            raise ConfigError("GEMINI_API_KEY_FILE", "the file is empty")
    if not key:
        raise ConfigError("GEMINI_API_KEY", "not set (nor GEMINI_API_KEY_FILE)")
    # A key with white space or control characters inside would end up in a header; say so
    # without echoing it.
    if any(c.isspace() or not c.isprintable() for c in key):
        variable = "GEMINI_API_KEY_FILE" if path else "GEMINI_API_KEY"
        raise ConfigError(variable, "the key contains white space or control characters")
    return key


def base_url(env: Mapping[str, str]) -> str:
    url = env.get("GEMINI_API_BASE_URL", "").strip() or DEFAULT_BASE_URL
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
    if host and (parts.scheme == "https" or (parts.scheme == "http" and is_loopback(host))):
        return url.rstrip("/")
    raise ConfigError("GEMINI_API_BASE_URL", "must be an https URL (http only for loopback hosts)")


def api_version(env: Mapping[str, str]) -> str:
    version = env.get("GEMINI_API_VERSION", "").strip() or DEFAULT_API_VERSION
    if not version.replace("_", "").isalnum():
        raise ConfigError("GEMINI_API_VERSION", "must be a version such as v1 or v1beta")
    return version


def subscribable_events() -> tuple[str, ...]:
    """Every event type the SDK knows a webhook can subscribe to (its own Literal)."""
    literal = typing.get_args(gw.WebhookSubscribedEvent)[0]
    return tuple(str(event) for event in typing.get_args(literal))


def webhooks_for(client: google.genai.Client, url: str) -> list[gw.Webhook]:
    """The webhooks registered for exactly `url`, through every page of the list."""
    found, token = [], None
    for _ in range(1000):  # a bound, not a limit anyone reaches: 1000 pages of 1000
        page = client.webhooks.list(page_size=1000, page_token=token)
        found += [hook for hook in page.webhooks or () if hook.uri == url]
        token = page.next_page_token
        if not token:
            return found
    raise RuntimeError("the webhook list did not end")


def describe_error(error: BaseException) -> str:
    """One line about a failed SDK call that never holds a secret.

    An error's own text may quote the response body, and the answers of create and
    rotate_signing_secret carry a secret: only Google's error status and message (an error body
    holds no secret) or the error's type are used.
    """
    if isinstance(error, sdk_errors.APIStatusError):
        status, message = error.status_code, ""
        body = error.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"]
            message = f"{detail.get('status') or ''}: {detail.get('message') or ''}".strip(": ")
        return f"answered HTTP {status}" + (f" ({_clip(message)})" if message else "")
    if isinstance(error, sdk_errors.APITimeoutError):
        return "did not answer in time"
    if isinstance(error, sdk_errors.APIConnectionError):
        return "could not be reached (connection failed)"
    return f"failed ({type(error).__name__})"


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
