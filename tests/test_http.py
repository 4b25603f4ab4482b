"""The HTTP contract, driven through Flask in-process: the real `handle`, `Verifier` and `Relay`
around in-memory Firestore and Pub/Sub fakes (tests/support/fakes.py)."""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import flask
import pytest
import werkzeug.routing
from werkzeug.datastructures import Headers
from werkzeug.test import TestResponse

from tests.support.fakes import PROJECT, Harness, Record, harness, jwks_server, rsa_key
from tests.support.signing import Ed25519Signer, headers_v1, new_secret
from webhook_relay.config import MAX_BODY_BYTES_LIMIT
from webhook_relay.errors import Unavailable
from webhook_relay.http import handle
from webhook_relay.verify import DYNAMIC_OFF_HINT

SECRET = new_secret()
AUDIENCE = "https://relay.example/webhook"
KEY = rsa_key("a")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVELOPE = {
    "type": "batch.succeeded",
    "version": "v1",
    "timestamp": "2026-05-04T10:00:00Z",
    "data": {"id": "batch_123456", "output_file_uri": "gs://my-bucket/results.jsonl"},
}
BODY = json.dumps(ENVELOPE).encode()
DOCUMENTED = {
    200: {"accepted", "duplicate", "quarantined", "ok", "ping"},
    400: {"bad_request"},
    401: {"unauthorized"},
    405: {"method_not_allowed"},
    409: {"in_flight"},
    413: {"too_large"},
    503: {"unavailable"},
}


def relay_env(**extra: str) -> dict[str, str]:
    return {
        "WEBHOOK_SIGNING_SECRETS": SECRET,
        "GEMINI_JWKS_URL": jwks_server(KEY).url,
        "GEMINI_JWT_AUDIENCE": AUDIENCE,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    } | extra


@pytest.fixture
def relay() -> Harness:
    return harness(relay_env())


@dataclass(frozen=True)
class Answer:
    status_code: int
    json: dict[str, Any]
    headers: Headers
    text: str


def answer(response: TestResponse) -> Answer:
    """The answer, checked against the contract's table: JSON, a documented code and status."""
    assert response.status_code in DOCUMENTED
    assert response.mimetype == "application/json"
    body = response.json
    assert isinstance(body, dict)
    assert body["status"] in DOCUMENTED[response.status_code]
    return Answer(response.status_code, body, response.headers, response.get_data(as_text=True))


def post(relay: Harness, body: bytes, headers: dict[str, str], **options: Any) -> Answer:
    return answer(relay.client.post("/", data=body, headers=headers, **options))


def wire(text: str) -> str:
    """A header value as WSGI hands it over: the UTF-8 bytes as latin-1 code points."""
    return text.encode().decode("latin-1")


def jwt_headers(token: str) -> dict[str, str]:
    return {
        "webhook-id": "msg_jwt",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": token,
    }


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return [entry for entry in entries if "http_status" in entry]


# --- accepted ------------------------------------------------------------------------------


def test_v1_delivery_is_accepted_and_published_as_the_contract_event(relay: Harness) -> None:
    response = post(relay, BODY, headers_v1(SECRET, BODY, webhook_id="msg_1"))
    assert (response.status_code, response.json) == (
        200,
        {"status": "accepted", "webhook_id": "msg_1"},
    )
    [message] = relay.publisher.messages
    assert message.topic == "gemini-batch"
    assert message.attributes == {
        "event_type": "batch.succeeded",
        "webhook_id": "msg_1",
        "subject": "batch_123456",
        "signature": "hmac",
        "content-type": "application/cloudevents+json; charset=utf-8",
        "ce-specversion": "1.0",
        "ce-id": "msg_1",
        "ce-source": "https://generativelanguage.googleapis.com",
        "ce-type": "batch.succeeded",
        "ce-time": "2026-05-04T10:00:00Z",
        "ce-subject": "batch_123456",
    }
    assert message.event() == {
        "specversion": "1.0",
        "id": "msg_1",
        "source": "https://generativelanguage.googleapis.com",
        "type": "batch.succeeded",
        "subject": "batch_123456",
        "time": "2026-05-04T10:00:00Z",
        "datacontenttype": "application/json",
        "signature": "hmac",
        "data": {
            "kind": "batch",
            "outcome": "succeeded",
            "terminal": True,
            "job_id": "batch_123456",
            "output_uri": "gs://my-bucket/results.jsonl",
            "file_name": None,
            "error": None,
            "user_metadata": None,
            "gemini": ENVELOPE,
        },
    }
    assert relay.claims.records["msg_1"].state == "published"
    assert relay.claims.records["msg_1"].message_id == message.message_id


def test_jwt_delivery_is_accepted(relay: Harness) -> None:
    response = post(relay, BODY, jwt_headers(KEY.token({"aud": AUDIENCE})))
    assert (response.status_code, response.json["status"]) == (200, "accepted")
    assert relay.publisher.messages[0].attributes["signature"] == "jwt"


def test_content_type_is_ignored(relay: Harness) -> None:
    response = post(relay, BODY, headers_v1(SECRET, BODY), content_type="text/plain")
    assert response.json["status"] == "accepted"


def test_event_goes_to_the_topic_of_its_type() -> None:
    relay = harness(relay_env(RELAY_ROUTES='{"batch.succeeded": "done", "*": "rest"}'))
    post(relay, BODY, headers_v1(SECRET, BODY))
    assert [message.topic for message in relay.publisher.messages] == ["done"]


# --- status mapping of refusals ------------------------------------------------------------


def test_missing_header_is_400(relay: Harness) -> None:
    headers = headers_v1(SECRET, BODY)
    del headers["webhook-signature"]
    assert post(relay, BODY, headers).status_code == 400


def test_malformed_signature_is_400(relay: Harness) -> None:
    headers = headers_v1(SECRET, BODY) | {"webhook-signature": "v1,a,b"}
    assert post(relay, BODY, headers).status_code == 400


def test_wrong_secret_is_401(relay: Harness) -> None:
    response = post(relay, BODY, headers_v1(new_secret(), BODY))
    assert response.status_code == 401
    assert relay.publisher.messages == []
    assert relay.claims.records == {}


def test_key_set_down_at_first_use_is_503_with_retry_after(relay: Harness) -> None:
    jwks_server(KEY).down = True
    response = post(relay, BODY, jwt_headers(KEY.token({"aud": AUDIENCE})))
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0


def test_key_set_down_on_refresh_for_unknown_kid_is_503(relay: Harness) -> None:
    post(relay, BODY, jwt_headers(KEY.token({"aud": AUDIENCE})))
    jwks_server(KEY).down = True
    relay.key_set_clock.advance(30)
    response = post(relay, BODY, jwt_headers(rsa_key("b").token({"aud": AUDIENCE})))
    assert response.status_code == 503
    assert "Retry-After" in response.headers


def test_unknown_kid_with_the_set_up_is_401(relay: Harness) -> None:
    response = post(relay, BODY, jwt_headers(rsa_key("b").token({"aud": AUDIENCE})))
    assert response.status_code == 401


# --- body size -----------------------------------------------------------------------------


def small_limit() -> Harness:
    return harness(relay_env(WEBHOOK_MAX_BODY_BYTES="1000"))


def test_body_over_limit_by_content_length_is_413() -> None:
    relay, body = small_limit(), b"x" * 1001
    response = post(relay, body, headers_v1(SECRET, body))
    assert response.status_code == 413
    assert relay.publisher.messages == []


class Chunked(io.RawIOBase):
    """A request body of unknown length, as a chunked upload reaches the WSGI app."""

    def __init__(self, body: bytes) -> None:
        self._rest = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), len(self._rest), 100)
        buffer[:size], self._rest = self._rest[:size], self._rest[size:]
        return size


def post_chunked(relay: Harness, body: bytes, headers: dict[str, str]) -> Answer:
    return post(
        relay,
        b"",
        headers | {"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input": Chunked(body), "wsgi.input_terminated": True},
    )


def test_body_over_limit_without_content_length_is_413() -> None:
    relay, body = small_limit(), b"x" * 1001
    assert post_chunked(relay, body, headers_v1(SECRET, body)).status_code == 413


def test_body_at_limit_without_content_length_is_read_whole() -> None:
    relay = small_limit()
    body = json.dumps(ENVELOPE | {"pad": ""}).encode()
    body = body.replace(b'"pad": ""', b'"pad": "' + b"p" * (1000 - len(body)) + b'"')
    assert len(body) == 1000
    response = post_chunked(relay, body, headers_v1(SECRET, body))
    assert response.json["status"] == "accepted"
    assert relay.publisher.messages[0].event()["data"]["gemini"] == json.loads(body)


def test_largest_configurable_body_still_fits_pubsub_when_quarantined() -> None:
    relay = harness(relay_env(WEBHOOK_MAX_BODY_BYTES=str(MAX_BODY_BYTES_LIMIT)))
    body = b"x" * MAX_BODY_BYTES_LIMIT  # not JSON: published base64-encoded, 4/3 the size
    assert post(relay, body, headers_v1(SECRET, body)).json["status"] == "quarantined"


# --- methods -------------------------------------------------------------------------------


def test_get_is_ok_and_reveals_no_configuration(relay: Harness) -> None:
    response = relay.client.get("/")
    assert (response.status_code, response.json) == (200, {"status": "ok"})
    for configured in (SECRET, AUDIENCE, PROJECT, "gemini-", jwks_server(KEY).url):
        assert configured not in response.text


def test_head_is_ok_without_body(relay: Harness) -> None:
    response = relay.client.head("/")
    assert (response.status_code, response.data) == (200, b"")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(relay: Harness, method: str) -> None:
    response = relay.client.open("/", method=method, data=BODY, headers=headers_v1(SECRET, BODY))
    assert response.status_code == 405
    assert response.json is not None
    assert response.json["status"] == "method_not_allowed"
    assert response.headers["Allow"] == "GET, HEAD, POST"
    assert relay.publisher.messages == []


# --- webhook-id ----------------------------------------------------------------------------


def test_webhook_id_over_1024_bytes_is_400(relay: Harness) -> None:
    webhook_id = "é" * 512 + "x"  # 1025 bytes
    headers = headers_v1(SECRET, BODY, webhook_id=webhook_id) | {"webhook-id": wire(webhook_id)}
    response = post(relay, BODY, headers)
    assert response.status_code == 400
    assert "webhook_id" not in response.json


def test_unicode_webhook_id_of_1024_bytes_is_accepted(relay: Harness) -> None:
    webhook_id = "é" * 510 + "/../"  # 1024 bytes, slashes and all
    headers = headers_v1(SECRET, BODY, webhook_id=webhook_id) | {"webhook-id": wire(webhook_id)}
    response = post(relay, BODY, headers)
    assert response.json == {"status": "accepted", "webhook_id": webhook_id}
    assert relay.publisher.messages[0].attributes["webhook_id"] == webhook_id


def test_webhook_id_not_utf8_is_400(relay: Harness) -> None:
    headers = headers_v1(SECRET, BODY) | {"webhook-id": "msg_\xff"}
    response = post(relay, BODY, headers)
    assert response.status_code == 400
    assert "webhook_id" not in response.json


def test_signature_header_not_utf8_is_400(relay: Harness) -> None:
    headers = headers_v1(SECRET, BODY) | {"webhook-signature": "v1,\xe9"}
    assert post(relay, BODY, headers).status_code == 400


# --- answers -------------------------------------------------------------------------------


def test_webhook_id_is_answered_only_when_the_request_carried_one(relay: Harness) -> None:
    headers = headers_v1(SECRET, BODY, webhook_id="msg_7")
    assert post(relay, BODY, headers | {"webhook-timestamp": "x"}).json["webhook_id"] == "msg_7"
    del headers["webhook-id"]
    assert "webhook_id" not in post(relay, BODY, headers).json


def test_answers_and_logs_never_hold_the_secret_signature_or_body(
    relay: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    body = json.dumps(ENVELOPE | {"note": "body-text-7f3a9c"}).encode()
    good = headers_v1(SECRET, body)
    signature = good["webhook-signature"].removeprefix("v1,")
    outcomes = [
        good,  # accepted
        good,  # duplicate
        headers_v1(new_secret(), body),  # unauthorized
        good | {"webhook-timestamp": "1.5"},  # bad request
        good | {"webhook-signature": good["webhook-signature"] + ",x"},  # malformed entry
    ]
    capsys.readouterr()
    texts = [post(relay, body, headers).text for headers in outcomes]
    texts.append(capsys.readouterr().out)
    for text in texts:
        assert SECRET.removeprefix("whsec_") not in text
        assert signature not in text
        assert "body-text-7f3a9c" not in text


def test_one_json_log_line_per_post(relay: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    headers = headers_v1(SECRET, BODY, webhook_id="msg_log")
    post(relay, BODY, headers | {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    [entry] = log_lines(capsys)
    assert entry["severity"] == "INFO"
    assert entry["message"] == "accepted batch.succeeded"
    assert (entry["status"], entry["http_status"], entry["webhook_id"]) == (
        "accepted",
        200,
        "msg_log",
    )
    assert isinstance(entry["latency_ms"], int | float)
    assert entry["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE_ID}"
    assert (entry["topic"], entry["signature"]) == ("gemini-batch", "hmac")


def test_log_line_trace_from_x_cloud_trace_context(
    relay: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = headers_v1(new_secret(), BODY) | {"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1"}
    post(relay, BODY, headers)
    [entry] = log_lines(capsys)
    assert entry["severity"] == "WARNING"
    assert entry["status"] == "unauthorized"
    assert entry["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE_ID}"


def test_503_is_logged_as_error(relay: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    relay.publisher.fail_with = Unavailable("Pub/Sub down")
    post(relay, BODY, headers_v1(SECRET, BODY))
    assert [entry["severity"] for entry in log_lines(capsys)] == ["ERROR"]


def test_get_is_not_logged(relay: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    relay.client.get("/")
    assert log_lines(capsys) == []


# --- quarantine ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"<xml/>", "body is not JSON", id="not-json"),
        pytest.param(b"[1]", "body is not a JSON object", id="not-an-object"),
        pytest.param(b'{"type": ["batch"]}', "body has no string 'type'", id="no-string-type"),
        pytest.param(b"", "empty body", id="empty"),
    ],
)
def test_verified_unreadable_body_is_quarantined(relay: Harness, body: bytes, reason: str) -> None:
    response = post(relay, body, headers_v1(SECRET, body, webhook_id="msg_q"))
    assert (response.status_code, response.json) == (
        200,
        {"status": "quarantined", "webhook_id": "msg_q"},
    )
    [message] = relay.publisher.messages
    assert message.topic == "gemini-unrouted"
    assert message.attributes["event_type"] == "relay.quarantined"
    event = message.event()
    assert event["type"] == "relay.quarantined"
    assert event["data"] == {"reason": reason, "body_base64": base64.b64encode(body).decode()}


def test_quarantine_goes_to_unrouted_even_with_a_star_route() -> None:
    relay = harness(relay_env(RELAY_ROUTES='{"*": "everything"}'))
    post(relay, b"nope", headers_v1(SECRET, b"nope"))
    assert [message.topic for message in relay.publisher.messages] == ["gemini-unrouted"]


# --- relay failure paths -------------------------------------------------------------------


def test_publish_unavailable_is_503_and_releases_the_claim(relay: Harness) -> None:
    relay.publisher.fail_with = Unavailable("Pub/Sub did not confirm", retry_after=7)
    headers = headers_v1(SECRET, BODY, webhook_id="msg_r")
    response = post(relay, BODY, headers)
    assert (response.status_code, response.headers["Retry-After"]) == (503, "7")
    assert relay.claims.released == ["msg_r"]
    assert relay.claims.live_claims() == []


def test_retry_after_a_failed_publish_publishes_it(relay: Harness) -> None:
    relay.publisher.fail_with = Unavailable("down")
    headers = headers_v1(SECRET, BODY, webhook_id="msg_retry")
    post(relay, BODY, headers)
    relay.publisher.fail_with = None
    assert post(relay, BODY, headers).json["status"] == "accepted"
    assert len(relay.publisher.messages) == 1
    assert relay.claims.records["msg_retry"].attempts == 2


def test_second_delivery_of_a_published_id_is_duplicate(relay: Harness) -> None:
    headers = headers_v1(SECRET, BODY, webhook_id="msg_d")
    post(relay, BODY, headers)
    response = post(relay, BODY, headers)
    assert (response.status_code, response.json) == (
        200,
        {"status": "duplicate", "webhook_id": "msg_d"},
    )
    assert len(relay.publisher.messages) == 1


def test_live_claim_of_another_request_is_409_with_retry_after(relay: Harness) -> None:
    relay.claims.records["msg_f"] = Record("claimed", time.time() + 20, 1, "batch.succeeded", None)
    response = post(relay, BODY, headers_v1(SECRET, BODY, webhook_id="msg_f"))
    assert (response.status_code, response.json["status"]) == (409, "in_flight")
    assert 1 <= int(response.headers["Retry-After"]) <= 20
    assert relay.publisher.messages == []


def test_unexpected_exception_in_claims_is_503_without_traceback(relay: Harness) -> None:
    relay.claims.fail_claim = KeyError("internal detail of the store")
    response = post(relay, BODY, headers_v1(SECRET, BODY))
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    text = response.text
    assert "Traceback" not in text
    assert "internal detail of the store" not in text


def test_unexpected_exception_in_publish_is_503_and_releases_the_claim(relay: Harness) -> None:
    relay.publisher.fail_with = RuntimeError("grpc channel closed")
    response = post(relay, BODY, headers_v1(SECRET, BODY, webhook_id="msg_x"))
    assert response.status_code == 503
    assert relay.claims.released == ["msg_x"]


def test_record_update_failing_after_publish_is_still_accepted(relay: Harness) -> None:
    relay.claims.fail_mark = Unavailable("Firestore down")
    response = post(relay, BODY, headers_v1(SECRET, BODY))
    assert response.json["status"] == "accepted"
    assert len(relay.publisher.messages) == 1


# --- pings, and what can never be published as read ----------------------------------------


@pytest.mark.parametrize("event_type", ["ping", "webhook.ping"])
def test_verified_ping_is_answered_and_recorded_not_published(
    relay: Harness, event_type: str
) -> None:
    body = json.dumps({"type": event_type}).encode()
    response = post(relay, body, headers_v1(SECRET, body, webhook_id="msg_ping"))
    assert (response.status_code, response.json["status"]) == (200, "ping")
    assert relay.publisher.messages == []
    assert relay.claims.records["msg_ping"].state == "published"
    again = post(relay, body, headers_v1(SECRET, body, webhook_id="msg_ping"))
    assert again.json["status"] == "duplicate"


def test_claim_lost_while_publishing_is_accepted_and_logged_as_a_double(
    relay: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    publish = relay.publisher.publish

    def slow_publish(*args: Any) -> str:
        relay.claims.records["msg_slow"].attempts += 1  # a retry took the claim over meanwhile
        return publish(*args)

    relay.publisher.publish = slow_publish  # type: ignore[method-assign,assignment]
    response = post(relay, BODY, headers_v1(SECRET, BODY, webhook_id="msg_slow"))
    assert response.json["status"] == "accepted"
    assert relay.claims.records["msg_slow"].state == "claimed"  # the successor's, untouched
    assert [r.__dict__.get("status") for r in caplog.records] == ["published_twice"]


def test_event_over_pubsub_limit_is_quarantined_not_refused(relay: Harness) -> None:
    big = harness(relay_env(WEBHOOK_MAX_BODY_BYTES=str(MAX_BODY_BYTES_LIMIT)))
    body = json.dumps({"type": "batch.succeeded", "data": {"id": "b" * 3_500_000}}).encode()
    response = post(big, body, headers_v1(SECRET, body))
    assert (response.status_code, response.json["status"]) == (200, "quarantined")
    [message] = big.publisher.on("gemini-unrouted")
    assert message.event()["data"]["reason"] == "too_large"


# --- headers first, and the body within the request's budget ---------------------------------


class Counted(Chunked):
    """A body that counts how often the relay reads it."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.reads = 0

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        return super().readinto(buffer)


def post_counted(relay: Harness, body: bytes, headers: dict[str, str]) -> tuple[Answer, int]:
    stream = Counted(body)
    response = post(
        relay,
        b"",
        headers | {"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True},
    )
    return response, stream.reads


def signed(**change: str | None) -> dict[str, str]:
    headers: dict[str, str | None] = {**headers_v1(SECRET, BODY), **change}
    return {name: value for name, value in headers.items() if value is not None}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param(lambda: signed(**{"webhook-id": None}), 400, id="missing-id"),
        pytest.param(lambda: signed(**{"webhook-timestamp": "12.5"}), 400, id="bad-timestamp"),
        pytest.param(lambda: signed(**{"webhook-signature": "junk"}), 400, id="no-entry"),
        pytest.param(
            lambda: signed(**{"webhook-timestamp": str(int(time.time()) - 400)}),
            401,
            id="stale-timestamp",
        ),
        pytest.param(
            lambda: jwt_headers(KEY.token({"aud": "https://someone-else.example"})),
            401,
            id="jwt-wrong-audience",
        ),
        pytest.param(
            lambda: jwt_headers(KEY.token({"aud": AUDIENCE, "exp": int(time.time()) - 400})),
            401,
            id="jwt-expired",
        ),
    ],
)
def test_what_the_headers_decide_is_refused_before_the_body_is_read(
    relay: Harness, headers: Any, code: int
) -> None:
    response, reads = post_counted(relay, BODY, headers())
    assert response.status_code == code
    assert reads == 0


def test_signature_over_the_body_reads_it(relay: Harness) -> None:
    response, reads = post_counted(relay, BODY, headers_v1(SECRET, BODY))
    assert response.json["status"] == "accepted"
    assert reads > 0


def test_jwt_proven_by_its_headers_is_still_delivered_with_its_body(relay: Harness) -> None:
    response, _ = post_counted(relay, BODY, jwt_headers(KEY.token({"aud": AUDIENCE})))
    assert (response.json["status"], response.json.get("detail")) == ("accepted", None)
    assert relay.publisher.messages[0].event()["data"]["gemini"] == ENVELOPE


class Trickle(io.RawIOBase):
    """A client sending a 200-byte body a byte at a time, slower than the request's budget."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.sent == 200:
            return 0
        time.sleep(self.pause)
        buffer[:1] = b" "
        self.sent += 1
        return 1


def test_body_trickled_past_the_budget_is_400_without_a_socket_to_watch(
    relay: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Flask test client has no socket: the budget is checked between reads.
    app = flask.Flask("short_budget")
    app.url_map.add(werkzeug.routing.Rule("/", endpoint="receive"))
    app.view_functions["receive"] = lambda: handle(flask.request, relay.pipeline, 0.2)
    stream = Trickle(0.02)
    headers = headers_v1(SECRET, BODY)
    response = app.test_client().post(
        "/",
        headers=headers | {"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True},
    )
    assert (response.status_code, response.json) == (
        400,
        {
            "status": "bad_request",
            "webhook_id": headers["webhook-id"],
            "detail": "body not received in time",
        },
    )
    assert stream.sent < 200  # given up on, not read to the end
    [entry] = log_lines(capsys)
    assert entry["severity"] == "WARNING"


# --- dynamic (per-request) v1a deliveries -------------------------------------------------


GOOGLE = Ed25519Signer()


def v1a_headers(signer: Ed25519Signer, body: bytes) -> dict[str, str]:
    now = int(time.time())
    return {
        "webhook-id": "msg_dynamic",
        "webhook-timestamp": str(now),
        "webhook-signature": signer.sign("msg_dynamic", now, body),
    }


def test_dynamic_v1a_delivery_is_published_as_keyset_ed25519(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = relay_env(GEMINI_DYNAMIC_WEBHOOKS="true")
    jwks_server(KEY, GOOGLE)
    relay = harness(env)
    assert post(relay, BODY, v1a_headers(GOOGLE, BODY)).json["status"] == "accepted"
    [message] = relay.publisher.messages
    assert message.attributes["signature"] == message.event()["signature"] == "keyset-ed25519"
    [entry] = log_lines(capsys)
    assert entry["signature"] == "keyset-ed25519"


def test_v1a_refused_while_dynamic_is_off_says_so_in_the_log_not_the_answer(
    relay: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    response = post(relay, BODY, v1a_headers(GOOGLE, BODY))
    assert response.status_code == 401
    assert response.json["detail"] == "no signature matches"
    assert "GEMINI_DYNAMIC_WEBHOOKS" not in response.text
    [entry] = log_lines(capsys)
    assert entry["hint"] == DYNAMIC_OFF_HINT
    assert entry["message"] == f"unauthorized ({DYNAMIC_OFF_HINT})"
    assert entry["signature"] == "ed25519"  # a refused v1a keeps the scheme it claims


def test_refused_dynamic_v1a_is_labelled_by_the_scheme_it_claims(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = relay_env(GEMINI_DYNAMIC_WEBHOOKS="true")
    jwks_server(KEY, GOOGLE)
    relay = harness(env)
    assert post(relay, BODY, v1a_headers(Ed25519Signer(), BODY)).status_code == 401
    [entry] = log_lines(capsys)
    assert entry["signature"] == "ed25519"
    assert "hint" not in entry


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
            f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        ),
        # Cloud Run's own header: the span id in decimal, `o=1` sampled.
        ({"X-Cloud-Trace-Context": f"{TRACE_ID}/1;o=1"}, f"00-{TRACE_ID}-0000000000000001-01"),
    ],
)
def test_the_delivery_trace_context_travels_on_the_message(
    relay: Harness, headers: dict[str, str], expected: str
) -> None:
    answer = post(relay, BODY, headers_v1(SECRET, BODY) | headers)

    assert answer.json["status"] == "accepted"
    assert relay.publisher.messages[-1].attributes["traceparent"] == expected


def test_a_delivery_without_trace_context_carries_no_traceparent(relay: Harness) -> None:
    post(relay, BODY, headers_v1(SECRET, BODY) | {"traceparent": "not-a-trace"})
    assert "traceparent" not in relay.publisher.messages[-1].attributes
