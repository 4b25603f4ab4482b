"""A loopback fake of the Gemini API's REST surface, driven through the real `google-genai` SDK.

Point the SDK at `fake.url` (`GEMINI_API_BASE_URL`) and it speaks to this server exactly as it
would to Google: the paths are the SDK's own (`/{version}/webhooks`,
`/{version}/webhooks/{id}:ping`, ...), and every answer is built from the SDK's own response
types and serialized the way the SDK reads them (snake_case JSON). Built in: the
WebhookService. Other modules add routes with `route()`; `fail()` injects errors; `calls`
records what was sent.

`:ping` really delivers: it POSTs a ping to the webhook's `uri`, signed (Standard Webhooks `v1`,
by the `standardwebhooks` package, not our code) with every secret Gemini still uses.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.genai import webhooks as gw
from pydantic import BaseModel

from .signing import sign_v1

ALL_EVENTS = (
    "batch.succeeded",
    "batch.expired",
    "batch.failed",
    "interaction.requires_action",
    "interaction.completed",
    "interaction.failed",
    "video.generated",
)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # the parsed JSON body, or None
    headers: dict[str, str]


@dataclass
class Request:
    """What a route handler gets: the call plus the path regex's match."""

    call: Call
    match: re.Match[str]

    @property
    def body(self) -> Any:
        return self.call.body


# A handler answers (status, body): body is a JSON-able value or one of the SDK's models.
Handler = Callable[[Request], tuple[int, Any]]


@dataclass
class Secret:
    value: str
    expire_time: datetime | None = None


@dataclass
class FakeWebhook:
    id: str
    uri: str
    subscribed_events: list[str]
    name: str | None = None
    state: str = "enabled"
    secrets: list[Secret] = field(default_factory=list)
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    update_time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def live_secrets(self, now: datetime) -> list[Secret]:
        return [s for s in self.secrets if s.expire_time is None or s.expire_time > now]

    def model(self, now: datetime, new_secret: str | None = None) -> gw.Webhook:
        # Validated from plain values: the SDK's field types are Literal unions.
        return gw.Webhook.model_validate(
            {
                "id": self.id,
                "name": self.name,
                "uri": self.uri,
                "subscribed_events": list(self.subscribed_events),
                "state": self.state,
                "create_time": self.create_time,
                "update_time": self.update_time,
                "new_signing_secret": new_secret,
                "signing_secrets": [
                    {"expire_time": s.expire_time, "truncated_secret": truncate(s.value)}
                    for s in self.live_secrets(now)
                ],
            }
        )


@dataclass
class Delivery:
    """A ping the fake sent: where, and what the receiver answered (status, parsed JSON or None)."""

    uri: str
    webhook_id: str
    status: int
    answer: Any


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def truncate(secret: str) -> str:
    return secret[:10] + "..."


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


@dataclass
class _Failure:
    method: str | None
    pattern: re.Pattern[str]
    status: int
    times: int  # remaining; -1: forever


class FakeGemini:
    """`with FakeGemini() as fake:` or `start()`/`stop()`; `fake.url` is the SDK's base URL."""

    def __init__(
        self, version: str = "v1", rotation_grace: timedelta = timedelta(hours=24)
    ) -> None:
        self.version = version
        # How long a rotated-out secret stays valid (Gemini: 24 h); tests shorten it.
        self.rotation_grace = rotation_grace
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.webhooks: dict[str, FakeWebhook] = {}
        self.calls: list[Call] = []
        self.deliveries: list[Delivery] = []
        self.issued: list[str] = []  # every secret handed out, to assert none leaks
        self.page_size = 50
        # Sent with injected failures: the SDK's own retries then run without real backoff.
        self.retry_after_ms = 1
        # The body of a ping delivery: undocumented by Google, so tests may change it.
        self.ping_type = "webhook.ping"
        self._routes: list[_Route] = []
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._install_webhooks()

    # --- extension points -------------------------------------------------------------------

    def route(self, method: str, path_regex: str, handler: Handler) -> None:
        """Serve `method` on paths fully matching `path_regex` (the version included, e.g.
        rf"/{fake.version}/batches/(?P<id>[^/]+)"). Routes added later win."""
        self._routes.insert(0, _Route(method.upper(), re.compile(path_regex), handler))

    def fail(self, path_regex: str, status: int, times: int = 1, method: str | None = None) -> None:
        """Answer the next `times` matching calls (-1: all) with `status`, in Google's shape."""
        with self._lock:
            self._failures.append(
                _Failure(method and method.upper(), re.compile(path_regex), status, times)
            )

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    def add_webhook(self, uri: str, events: list[str] | None = None, **kw: Any) -> FakeWebhook:
        """Seed a webhook as if created earlier (its secret is in `.secrets[0].value`)."""
        with self._lock:
            hook = FakeWebhook(
                id=kw.pop("id", "wh_" + secrets.token_hex(6)),
                uri=uri,
                subscribed_events=list(events or ALL_EVENTS),
                secrets=[Secret(self.new_secret())],
                **kw,
            )
            self.webhooks[hook.id] = hook
            return hook

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeGemini:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- the WebhookService ---------------------------------------------------------------------

    def _install_webhooks(self) -> None:
        base = rf"/{re.escape(self.version)}/webhooks"
        one = base + r"/(?P<id>[^/:]+)"
        self.route("GET", base, self._list)
        self.route("POST", base, self._create)
        self.route("GET", one, self._get)
        self.route("PATCH", one, self._update)
        self.route("DELETE", one, self._delete)
        self.route("POST", one + ":ping", self._ping)
        self.route("POST", one + ":rotateSigningSecret", self._rotate)

    def new_secret(self) -> str:
        secret = _new_secret()
        self.issued.append(secret)
        return secret

    def _hook(self, request: Request) -> FakeWebhook | None:
        return self.webhooks.get(request.match["id"])

    def _list(self, request: Request) -> tuple[int, Any]:
        size = int(request.call.query.get("page_size") or self.page_size)
        start = int(request.call.query.get("page_token") or 0)
        hooks = list(self.webhooks.values())
        page = hooks[start : start + size]
        more = start + size < len(hooks)
        now = self.clock()
        return 200, gw.WebhookListResponse(
            webhooks=[h.model(now) for h in page],
            next_page_token=str(start + size) if more else None,
        )

    def _create(self, request: Request) -> tuple[int, Any]:
        body = gw.WebhookInput.model_validate(request.body)
        secret = self.new_secret()
        hook = FakeWebhook(
            id="wh_" + secrets.token_hex(6),
            uri=body.uri,
            name=body.name,
            subscribed_events=list(body.subscribed_events),
            secrets=[Secret(secret)],
        )
        self.webhooks[hook.id] = hook
        return 200, hook.model(self.clock(), new_secret=secret)

    def _get(self, request: Request) -> tuple[int, Any]:
        hook = self._hook(request)
        if hook is None:
            return _error(404, "NOT_FOUND", "Webhook not found.")
        return 200, hook.model(self.clock())

    def _update(self, request: Request) -> tuple[int, Any]:
        hook = self._hook(request)
        if hook is None:
            return _error(404, "NOT_FOUND", "Webhook not found.")
        body = gw.WebhookUpdate.model_validate(request.body or {})
        mask = request.call.query.get("update_mask")
        fields = mask.split(",") if mask else [k for k, v in body if v is not None]
        for name in fields:
            setattr(hook, name, getattr(body, name))
        hook.update_time = self.clock()
        return 200, hook.model(self.clock())

    def _delete(self, request: Request) -> tuple[int, Any]:
        if self.webhooks.pop(request.match["id"], None) is None:
            return _error(404, "NOT_FOUND", "Webhook not found.")
        return 200, {}

    def _rotate(self, request: Request) -> tuple[int, Any]:
        hook = self._hook(request)
        if hook is None:
            return _error(404, "NOT_FOUND", "Webhook not found.")
        body = gw.RotateSigningSecretRequest.model_validate(request.body or {})
        now = self.clock()
        if body.revocation_behavior == "revoke_previous_secrets_immediately":
            hook.secrets = []
        else:
            for old in hook.live_secrets(now):
                if old.expire_time is None:
                    old.expire_time = now + self.rotation_grace
        secret = self.new_secret()
        hook.secrets = [*hook.live_secrets(now), Secret(secret)]
        return 200, gw.WebhookRotateSigningSecretResponse(secret=secret)

    def _ping(self, request: Request) -> tuple[int, Any]:
        hook = self._hook(request)
        if hook is None:
            return _error(404, "NOT_FOUND", "Webhook not found.")
        self.deliveries.append(self.deliver(hook, {"type": self.ping_type, "data": {}}))
        return 200, gw.WebhookPingResponse()

    def deliver(self, hook: FakeWebhook, envelope: dict[str, Any]) -> Delivery:
        """POST `envelope` (plus version and timestamp) to the webhook, signed as Gemini signs."""
        now = self.clock()
        body = json.dumps(
            {"version": "v1", "timestamp": now.isoformat().replace("+00:00", "Z"), **envelope}
        ).encode()
        message_id = "msg_" + secrets.token_hex(12)
        stamp = int(time.time())
        signature = " ".join(
            sign_v1(s.value, message_id, stamp, body) for s in hook.live_secrets(now)
        )
        request = urllib.request.Request(
            hook.uri,
            data=body,
            method="POST",
            headers={
                "content-type": "application/json",
                "webhook-id": message_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": signature,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except OSError:
            status, raw = 0, b""
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Delivery(hook.uri, message_id, status, parsed)

    # --- HTTP plumbing ---------------------------------------------------------------------------

    def _dispatch(self, call: Call) -> tuple[int, Any]:
        with self._lock:
            self.calls.append(call)
            for failure in self._failures:
                if failure.times == 0 or (failure.method and failure.method != call.method):
                    continue
                if failure.pattern.fullmatch(call.path):
                    failure.times -= 1 if failure.times > 0 else 0
                    return _error(failure.status, _STATUS_NAMES.get(failure.status, "ERROR"))
            routes = list(self._routes)
        for route in routes:
            match = route.pattern.fullmatch(call.path)
            if route.method == call.method and match:
                with self._lock:
                    return route.handler(Request(call, match))
        return _error(404, "NOT_FOUND", f"No route for {call.method} {call.path}.")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer = fake._dispatch(
                    Call(self.command, parts.path, query, body, headers)
                )
                data = json.dumps(_jsonable(answer)).encode()
                self.send_response(status)
                if status in (429, 500, 502, 503, 504):
                    self.send_header("retry-after-ms", str(fake.retry_after_ms))
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _error(status: int, name: str, message: str | None = None) -> tuple[int, Any]:
    """Google's JSON error shape (https://google.aip.dev/193)."""
    text = message or f"Injected {status} {name}."
    return status, {"error": {"code": status, "message": text, "status": name}}


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return json.loads(value.model_dump_json(by_alias=True, exclude_none=True))
    return value
