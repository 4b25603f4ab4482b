"""`webhook-relay send`: deliver one signed Gemini event the way Gemini does.

Three forms: static webhooks (`hmac`, Standard Webhooks `v1`), and per-request (dynamic)
webhooks either as Google's guide documents them (`jwt`, RS256) or as live deliveries have
been reported (`keyset`: a `v1a` Ed25519 entry made with a key of the key set, python-genai
issue 2927). The two dynamic forms sign with the keys of `webhook-relay dev`'s key set.

Like Gemini: the body is fixed for the delivery, `webhook-id` is stable across retries, and
each attempt carries its own `webhook-timestamp` and a signature computed for it. Any non-2xx
answer, or no answer, is retried with exponential backoff.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import re
import secrets as random_tokens
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import urlsplit

import click

from ..config import is_loopback
from ..signing import Ed25519DevKey, RsaSigner, SecretFormatError, secret_key, signature_v1
from . import state as dev_state
from ._common import fail, note
from .catalog import EVENT_TYPES, envelope, sample_data

DEFAULT_TYPE = "batch.succeeded"
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "webhook-relay-send"
# In the dev state directory, beside the JWT key: the private half of the dev key set's
# Ed25519 key (`webhook-relay dev` writes it, and removes it when it stops).
KEYSET_KEY_FILE = "keyset-ed25519-private-key.pem"


@dataclass(frozen=True)
class Answer:
    """One attempt's result: an HTTP answer, or `problem` when there was none."""

    code: int | None
    status: str | None = None
    detail: str | None = None
    retry_after: float | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    def describe(self) -> str:
        if self.code is None:
            return f"no answer ({self.problem})"
        text = f"{self.code} {self.status or '(no status)'}"
        return f"{text}: {self.detail}" if self.detail else text


Sign = Callable[[str, int, bytes], str]


@click.command()
@click.argument("event_type", metavar="[TYPE]", required=False)
@click.option("--url", help="The relay's URL. Default: the running `webhook-relay dev`.")
@click.option(
    "--data",
    "data_json",
    metavar="JSON",
    help="A JSON object merged over the sample `data` (a key set to null is dropped).",
)
@click.option(
    "--file",
    "body_file",
    type=click.File("rb"),
    help="Send this file's bytes as the body, verbatim ('-': standard input).",
)
@click.option("--id", "webhook_id", metavar="ID", help="The webhook-id. Default: a fresh one.")
@click.option(
    "--secret",
    "secret_values",
    multiple=True,
    metavar="whsec_…",
    help="Sign with this secret (repeat for several, as during a rotation). Visible to other "
    "users in `ps`: prefer --secrets-file or WEBHOOK_SIGNING_SECRETS. Default: the dev secret.",
)
@click.option(
    "--secrets-file",
    type=click.File("r"),
    help="Sign with the secrets in this file, separated by commas or white space "
    "('-': standard input).",
)
@click.option(
    "--scheme",
    type=click.Choice(["hmac", "jwt", "keyset"]),
    default="hmac",
    show_default=True,
    help="hmac: static webhooks (Standard Webhooks v1). jwt: dynamic webhooks as Google's "
    "guide documents them (RS256 JWT signed with the dev key). keyset: dynamic webhooks as "
    "live deliveries are signed (v1a, Ed25519 key of the dev key set).",
)
@click.option("--audience", help="The JWT `aud`. Default: the URL.")
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="Retries after a non-2xx answer or no answer.",
)
@click.option(
    "--backoff",
    type=click.FloatRange(0, 3600),
    default=1.0,
    show_default=True,
    help="Seconds before the first retry; doubled for each further one.",
)
@click.option(
    "--max-backoff",
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="Longest wait between attempts, Retry-After included.",
)
@click.option(
    "--duplicates",
    type=click.IntRange(0, 100),
    default=0,
    show_default=True,
    help="Deliver the same webhook-id this many more times.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 300),
    default=10.0,
    show_default=True,
    help="Seconds to wait for each answer.",
)
@dev_state.state_dir_option()
def send(
    event_type: str | None,
    url: str | None,
    data_json: str | None,
    body_file: IO[bytes] | None,
    webhook_id: str | None,
    secret_values: Sequence[str],
    secrets_file: TextIO | None,
    scheme: str,
    audience: str | None,
    retries: int,
    backoff: float,
    max_backoff: float,
    duplicates: int,
    timeout: float,
    state_dir: Path,
) -> None:
    """Deliver a signed Gemini event to the relay, as Gemini does.

    TYPE is one of the catalog's event types (default batch.succeeded):
    batch.succeeded, batch.failed, batch.expired, batch.cancelled,
    interaction.requires_action, interaction.completed, interaction.failed,
    interaction.cancelled, video.generated. A type outside the catalog needs --data.

    Exit status 0 when every delivery's final answer is 2xx, 1 otherwise.

    \b
    Examples:
      webhook-relay send
      webhook-relay send video.generated --data '{"file_name": "files/abc"}'
      webhook-relay send batch.failed --scheme jwt --duplicates 2
      webhook-relay send interaction.completed --scheme keyset
      webhook-relay send --file body.json --url https://… --secret whsec_…
    """
    state = dev_state.load(state_dir)
    target = _url(url, state)
    body, shown_type, subject = _body(event_type, data_json, body_file)
    secret_values = [*secret_values, *_separated(secrets_file.read() if secrets_file else "")]
    if not secret_values:  # the name the relay reads, so one environment serves both
        secret_values = _separated(os.environ.get("WEBHOOK_SIGNING_SECRETS", ""))
    sign, signed_with = _signer(scheme, secret_values, audience, target, state, state_dir)
    webhook_id = webhook_id or "msg_" + random_tokens.token_hex(12)
    if not webhook_id.strip():
        fail("--id must not be blank")
    opener = _opener(target)

    about = f" job {subject}" if subject else ""
    click.echo(
        f"POST {target}  {click.style(shown_type, bold=True)}{about}  "
        f"webhook-id {webhook_id}  ({signed_with})"
    )
    failed: list[Answer] = []
    for delivery in range(duplicates + 1):
        label = "" if delivery == 0 else f"duplicate {delivery}/{duplicates} "
        answer = _deliver(
            opener, target, body, webhook_id, sign, label, retries, backoff, max_backoff, timeout
        )
        if not answer.ok:
            failed.append(answer)
    if failed:
        last = failed[-1]
        tries = f"after {retries + 1} attempt{'s' if retries else ''}"
        summary = (
            f"no answer {tries}: {last.problem}"
            if last.code is None
            else f"final answer {last.describe()} ({tries})"
        )
        if duplicates:
            summary += f"; {len(failed)} of {duplicates + 1} deliveries failed"
        fail(summary)


def _url(url: str | None, state: dev_state.DevState | None) -> str:
    if url is None:
        if state is None:
            fail("no --url, and no running `webhook-relay dev` (see --state-dir)")
        url = state.url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"--url must be an http:// or https:// URL with a host, not {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        fail(f"--url has an invalid port: {url!r}")
    return url


def _body(
    event_type: str | None, data_json: str | None, body_file: IO[bytes] | None
) -> tuple[bytes, str, str | None]:
    """The raw body, the type to show, and the job id."""
    if body_file is not None:
        if event_type is not None or data_json is not None:
            fail("--file sends a whole body: give it without TYPE and --data")
        body = body_file.read()
        try:
            parsed: Any = json.loads(body)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("type"), str):
            data = parsed.get("data")
            subject = data.get("id") if isinstance(data, dict) else None
            return body, parsed["type"], subject if isinstance(subject, str) else None
        return body, "(not a Gemini envelope: the relay will quarantine it)", None

    event_type = DEFAULT_TYPE if event_type is None else event_type.strip()
    override = _data_override(data_json)
    if event_type in EVENT_TYPES:
        # The sample's links follow a given job id: --data '{"id": "batch_1"}' is enough.
        given_id = (override or {}).get("id")
        data = sample_data(event_type, given_id if isinstance(given_id, str) else None)
    elif override is None:
        fail(
            f"unknown event type {event_type!r} (known: {', '.join(EVENT_TYPES)}); "
            "for a type outside the catalog, give its data with --data"
        )
    else:
        if not event_type:
            fail("the event type must not be empty")
        note(f"note: {event_type} is not in the catalog; sending it with the given data")
        data = {}
    for key, value in (override or {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    body = json.dumps(envelope(event_type, data), separators=(",", ":")).encode()
    subject = data.get("id")
    return body, event_type, subject if isinstance(subject, str) else None


def _data_override(data_json: str | None) -> dict[str, Any] | None:
    if data_json is None:
        return None
    try:
        data = json.loads(data_json)
    except ValueError as exc:
        fail(f"--data is not valid JSON ({exc})")
    if not isinstance(data, dict):
        fail("--data must be a JSON object")
    return data


def _separated(text: str) -> list[str]:
    return [token for token in re.split(r"[\s,]+", text) if token]


def _signer(
    scheme: str,
    secret_values: Sequence[str],
    audience: str | None,
    url: str,
    state: dev_state.DevState | None,
    state_dir: Path,
) -> tuple[Sign, str]:
    if scheme == "keyset":
        if state is None:
            fail(
                "--scheme keyset signs with the dev key set: start `webhook-relay dev` "
                "(see --state-dir)"
            )
        path = state_dir / KEYSET_KEY_FILE
        try:
            key = Ed25519DevKey.load(path)
        except (OSError, ValueError) as exc:
            fail(f"cannot read the dev key set's Ed25519 key {path} ({exc})")
        return key.sign, f"keyset-ed25519 v1a, kid {key.kid}"
    if scheme == "jwt":
        if state is None:
            fail("--scheme jwt signs with the dev key: start `webhook-relay dev` (see --state-dir)")
        try:
            signer = RsaSigner.load(Path(state.private_key), state.kid)
        except (OSError, ValueError) as exc:
            fail(f"cannot read the dev private key {state.private_key} ({exc})")
        aud = audience or url.rstrip("/")
        return lambda _id, timestamp, _body: signer.token(aud, timestamp), f"jwt, kid {signer.kid}"

    values = list(secret_values)
    if not values:
        if state is None:
            fail(
                "no --secret, --secrets-file or WEBHOOK_SIGNING_SECRETS, and no running "
                "`webhook-relay dev` to take one from"
            )
        values = [state.secret]
    keys = []
    for position, value in enumerate(values, start=1):
        try:
            keys.append(secret_key(value.strip()))
        except SecretFormatError as exc:
            which = "--secret" if len(values) == 1 else f"--secret #{position}"
            fail(f"{which}: {exc}")  # never echo the value
    count = "1 secret" if len(keys) == 1 else f"{len(keys)} secrets"

    def sign(webhook_id: str, timestamp: int, body: bytes) -> str:
        return signature_v1(keys, webhook_id, timestamp, body)

    return sign, f"hmac, {count}"


def _deliver(
    opener: urllib.request.OpenerDirector,
    url: str,
    body: bytes,
    webhook_id: str,
    sign: Sign,
    label: str,
    retries: int,
    backoff: float,
    max_backoff: float,
    timeout: float,
) -> Answer:
    attempts = retries + 1
    answer = Answer(None, problem="not sent")
    for attempt in range(1, attempts + 1):
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(webhook_id, timestamp, body),
        }
        answer = post(opener, url, body, headers, timeout)
        wait = None
        if not answer.ok and attempt < attempts:
            wait = min(max(backoff * 2 ** (attempt - 1), answer.retry_after or 0.0), max_backoff)
        _show(label, attempt, answer, wait)
        if wait is None:
            return answer
        time.sleep(wait)
    return answer


def _show(label: str, attempt: int, answer: Answer, wait: float | None) -> None:
    colour = "green" if answer.ok else ("yellow" if wait is not None else "red")
    line = f"  {label}attempt {attempt}: " + click.style(answer.describe(), fg=colour)
    if wait is not None:
        line += f" (retrying in {wait:g} s)"
    click.echo(line)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other non-2xx: Gemini would not follow it with a POST."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if is_loopback(urlsplit(url).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))  # never send local traffic to a proxy
    return urllib.request.build_opener(*handlers)


def post(
    opener: urllib.request.OpenerDirector,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
) -> Answer:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with opener.open(request, timeout=timeout) as response:
            return _answer(response.status, response.headers, response.read(MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as error:
        with error:
            return _answer(error.code, error.headers, error.read(MAX_ANSWER_BYTES))
    except urllib.error.URLError as error:
        return Answer(None, problem=_connection_problem(error.reason, url))
    except (OSError, http.client.HTTPException) as error:
        return Answer(None, problem=_connection_problem(error, url))


def _connection_problem(reason: object, url: str) -> str:
    host = urlsplit(url).netloc
    if isinstance(reason, ConnectionRefusedError):
        return f"connection to {host} refused"
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"{host} did not answer in time"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {urlsplit(url).hostname}"
    if isinstance(reason, http.client.RemoteDisconnected | ConnectionResetError):
        return f"{host} closed the connection without an answer"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return f"cannot reach {host} ({text})"


def _answer(code: int, headers: Any, raw: bytes) -> Answer:
    status = detail = None
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict):
        status = document.get("status") if isinstance(document.get("status"), str) else None
        detail = document.get("detail") if isinstance(document.get("detail"), str) else None
    elif raw.strip():
        detail = " ".join(raw[:120].decode("utf-8", "replace").split())
    return Answer(code, status, detail, _retry_after(headers.get("Retry-After")))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
