"""`webhook-relay send` against a small local HTTP server that answers as scripted.

No emulators: what is checked is what goes over the wire (headers, signatures, body, retries)
and what the command says and exits with. Most tests run the command in this process
(`webhook_relay.cli.main`, what the console script calls); a few run the console script.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from standardwebhooks import Webhook

from tests.cli.conftest import assert_one_error_line, clean_env, run
from webhook_relay.cli import main
from webhook_relay.cli import state as dev_state
from webhook_relay.cli.catalog import EVENT_TYPES
from webhook_relay.cli.send import KEYSET_KEY_FILE
from webhook_relay.emulators import free_port
from webhook_relay.signing import Ed25519DevKey, RsaSigner, new_secret

STATUS = {200: "accepted", 401: "unauthorized", 409: "in_flight", 503: "unavailable"}


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class FakeRelay:
    """Answers the scripted (code, headers) in turn, then 200 `accepted` forever."""

    url: str
    script: list[tuple[int, dict[str, str]]]
    received: list[Received] = field(default_factory=list)

    def gaps(self) -> list[float]:
        return [b.at - a.at for a, b in zip(self.received, self.received[1:], strict=False)]


MakeRelay = Callable[..., FakeRelay]


@pytest.fixture
def fake_relay() -> Iterator[MakeRelay]:
    servers: list[ThreadingHTTPServer] = []

    def make(*script: tuple[int, dict[str, str]]) -> FakeRelay:
        relay = FakeRelay("", list(script))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                relay.received.append(
                    Received(
                        {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                    )
                )
                code, headers = relay.script.pop(0) if relay.script else (200, {})
                answer = json.dumps({"status": STATUS.get(code, "other")}).encode()
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        relay.url = f"http://127.0.0.1:{server.server_address[1]}"
        return relay

    yield make
    for server in servers:
        server.shutdown()
        server.server_close()


Send = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Send:
    """`webhook-relay send ARGS…` in this process, in `tmp_path`, with a clean environment."""
    monkeypatch.chdir(tmp_path)
    for variable in set(os.environ) - set(clean_env()):
        monkeypatch.delenv(variable)

    def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as scoped:
            for name, value in (env or {}).items():
                scoped.setenv(name, value)
            capsys.readouterr()
            status = main(["send", *args])
            captured = capsys.readouterr()
        return subprocess.CompletedProcess(["send", *args], status, captured.out, captured.err)

    return invoke


def verify(secret: str, received: Received) -> dict[str, Any]:
    """The reference library's verdict (it raises on a bad signature or an old timestamp)."""
    parsed: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return parsed


def test_retries_503_until_2xx_resigning_each_attempt(send: Send, fake_relay: MakeRelay) -> None:
    secret = new_secret()
    relay = fake_relay((503, {"Retry-After": "0"}), (503, {}))
    result = send("--url", relay.url, "--secret", secret, "--backoff", "0.01")
    assert result.returncode == 0, result.stderr
    assert len(relay.received) == 3
    assert "attempt 1: 503 unavailable (retrying in" in result.stdout
    assert "attempt 2: 503 unavailable" in result.stdout
    assert "attempt 3: 200 accepted" in result.stdout
    assert "attempt 4" not in result.stdout
    assert len({r.headers["webhook-id"] for r in relay.received}) == 1
    assert len({r.body for r in relay.received}) == 1  # one delivery: the same bytes each time
    for received in relay.received:  # each attempt signed for its own timestamp
        verify(secret, received)


def test_backoff_doubles_and_gives_up(send: Send, fake_relay: MakeRelay) -> None:
    relay = fake_relay(*[(503, {})] * 10)
    result = send(
        "--url", relay.url, "--secret", new_secret(), "--retries", "3", "--backoff", "0.1"
    )
    assert len(relay.received) == 4
    gaps = relay.gaps()
    assert gaps[0] >= 0.09
    assert gaps[1] >= 0.19
    assert gaps[2] >= 0.39
    assert_one_error_line(result, "final answer 503 unavailable (after 4 attempts)")


def test_retry_after_is_honoured_up_to_the_cap(send: Send, fake_relay: MakeRelay) -> None:
    relay = fake_relay((409, {"Retry-After": "1"}))
    result = send("--url", relay.url, "--secret", new_secret(), "--backoff", "0.01")
    assert result.returncode == 0, result.stderr
    assert relay.gaps()[0] >= 0.95
    assert "(retrying in 1 s)" in result.stdout

    capped = fake_relay((409, {"Retry-After": "30"}))
    started = time.monotonic()
    result = send(
        "--url", capped.url, "--secret", new_secret(), "--backoff", "0.01",
        "--max-backoff", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert 0.15 <= capped.gaps()[0] < 5
    assert time.monotonic() - started < 10


def test_non_2xx_final_answer_exits_1(send: Send, fake_relay: MakeRelay) -> None:
    relay = fake_relay((401, {}))
    result = send("--url", relay.url, "--secret", new_secret(), "--retries", "0")
    assert len(relay.received) == 1
    assert "attempt 1: 401 unauthorized" in result.stdout
    assert_one_error_line(result, "final answer 401 unauthorized")


def test_duplicates_resend_the_same_id_and_body(send: Send, fake_relay: MakeRelay) -> None:
    secret = new_secret()
    relay = fake_relay()
    result = send(
        "video.generated", "--url", relay.url, "--secret", secret, "--duplicates", "2",
        "--id", "msg_fixed",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r.headers["webhook-id"] for r in relay.received] == ["msg_fixed"] * 3
    assert len({r.body for r in relay.received}) == 1
    assert "duplicate 1/2 attempt 1: 200" in result.stdout
    assert "duplicate 2/2 attempt 1: 200" in result.stdout
    for received in relay.received:
        verify(secret, received)


def test_one_entry_per_secret(send: Send, fake_relay: MakeRelay) -> None:
    old, new = new_secret(), new_secret()
    relay = fake_relay()
    result = send("--url", relay.url, "--secret", old, "--secret", new)
    assert result.returncode == 0, result.stderr
    [received] = relay.received
    entries = received.headers["webhook-signature"].split(" ")
    assert len(entries) == 2
    assert all(entry.startswith("v1,") for entry in entries)
    verify(old, received)
    verify(new, received)


def test_secrets_from_a_file_stay_off_the_command_line(
    send: Send, fake_relay: MakeRelay, tmp_path: Path
) -> None:
    old, new = new_secret(), new_secret()
    (tmp_path / "secrets").write_text(f"{old},\n{new}\n")
    relay = fake_relay()
    result = send("--url", relay.url, "--secrets-file", str(tmp_path / "secrets"))
    assert result.returncode == 0, result.stderr
    [received] = relay.received
    verify(old, received)
    verify(new, received)


def test_secrets_from_the_environment(send: Send, fake_relay: MakeRelay) -> None:
    secret = new_secret()
    relay = fake_relay()
    result = send("--url", relay.url, env={"WEBHOOK_SIGNING_SECRETS": secret})
    assert result.returncode == 0, result.stderr
    [received] = relay.received
    verify(secret, received)
    assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_envelope_of_every_catalog_type(send: Send, fake_relay: MakeRelay, event_type: str) -> None:
    relay = fake_relay()
    result = send(event_type, "--url", relay.url, "--secret", new_secret())
    assert result.returncode == 0, result.stderr
    envelope = json.loads(relay.received[0].body)
    assert set(envelope) == {"type", "version", "timestamp", "data"}
    assert envelope["type"] == event_type
    assert envelope["version"] == "v1"
    assert envelope["timestamp"].endswith("Z")
    assert datetime.fromisoformat(envelope["timestamp"]).utcoffset() is not None
    data = envelope["data"]
    assert isinstance(data["id"], str)
    assert data["id"] in result.stdout
    if event_type in ("batch.succeeded", "video.generated"):
        assert data["output_file_uri"].startswith("gs://")
    if event_type.endswith(".failed"):
        assert {"error_code", "error_message"} <= set(data)
    if event_type == "video.generated":
        assert "file_name" in data


def test_data_is_merged_over_the_sample(send: Send, fake_relay: MakeRelay) -> None:
    relay = fake_relay()
    data = '{"id": "batch_mine", "output_file_uri": null, "extra": [1]}'
    result = send("--url", relay.url, "--secret", new_secret(), "--data", data)
    assert result.returncode == 0, result.stderr
    envelope = json.loads(relay.received[0].body)
    assert envelope["type"] == "batch.succeeded"  # the default type
    assert envelope["data"] == {"id": "batch_mine", "extra": [1]}


def test_type_outside_the_catalog_needs_data(send: Send, fake_relay: MakeRelay) -> None:
    relay = fake_relay()
    result = send(
        "model.tuned", "--url", relay.url, "--secret", new_secret(), "--data",
        '{"id": "t1"}',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(relay.received[0].body)["type"] == "model.tuned"
    assert "not in the catalog" in result.stderr


def test_file_is_sent_verbatim(send: Send, tmp_path: Path, fake_relay: MakeRelay) -> None:
    relay = fake_relay()
    body = b'{ "type" : "batch.expired",\n "data": {"id": "b"} }'
    (tmp_path / "body.json").write_bytes(body)
    result = send("--file", "body.json", "--url", relay.url, "--secret", new_secret())
    assert result.returncode == 0, result.stderr
    assert relay.received[0].body == body
    assert "batch.expired" in result.stdout

    piped = run(
        "send", "--file", "-", "--url", relay.url, "--secret", new_secret(),
        env=clean_env(), cwd=tmp_path, input_bytes=b"\x00not json",
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert relay.received[1].body == b"\x00not json"


def write_state(state_dir: Path, url: str, signer: RsaSigner, secret: str) -> None:
    dev_state.prepare(state_dir)
    key = state_dir / dev_state.KEY_FILE
    signer.save(key)
    dev_state.write(
        state_dir,
        dev_state.DevState(
            url=url,
            secret=secret,
            jwks_url="http://127.0.0.1:1/.well-known/jwks.json",
            kid=signer.kid,
            private_key=str(key),
            project="demo-project",
            prefix="gemini-",
            firestore_host="127.0.0.1:1",
            pubsub_host="127.0.0.1:1",
            topics=["gemini-batch"],
            subscriptions={"gemini-batch-dev": "gemini-batch"},
            pids={"dev": os.getpid()},  # alive: this test process stands in for `dev`
        ),
    )


def test_defaults_come_from_the_dev_state(
    send: Send, tmp_path: Path, fake_relay: MakeRelay
) -> None:
    relay = fake_relay()
    secret, signer = new_secret(), RsaSigner()
    write_state(tmp_path / ".webhook-relay", relay.url, signer, secret)
    result = send("interaction.completed")
    assert result.returncode == 0, result.stderr
    verify(secret, relay.received[0])

    result = send("video.generated", "--scheme", "jwt")
    assert result.returncode == 0, result.stderr
    token = relay.received[1].headers["webhook-signature"]
    assert jwt.get_unverified_header(token)["kid"] == signer.kid
    [key] = jwt.PyJWKSet.from_json(signer.jwks().decode()).keys
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=relay.url)
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - int(relay.received[1].headers["webhook-timestamp"])) <= 1


def test_keyset_scheme_signs_v1a_with_the_dev_key_sets_ed25519_key(
    send: Send, tmp_path: Path, fake_relay: MakeRelay
) -> None:
    relay = fake_relay()
    state_dir = tmp_path / ".webhook-relay"
    write_state(state_dir, relay.url, RsaSigner(), new_secret())
    Ed25519DevKey.generate().save(state_dir / KEYSET_KEY_FILE)
    result = send("batch.succeeded", "--scheme", "keyset", "--retries", "1", "--backoff", "0")
    assert result.returncode == 0, result.stderr
    [received] = relay.received
    version, _, value = received.headers["webhook-signature"].partition(",")
    assert version == "v1a"
    # Checked with `cryptography` alone, from the key file: not with the signer under test.
    private = serialization.load_pem_private_key(
        (state_dir / KEYSET_KEY_FILE).read_bytes(), password=None
    )
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    content = (
        f"{received.headers['webhook-id']}.{received.headers['webhook-timestamp']}.".encode()
        + received.body
    )
    private.public_key().verify(base64.b64decode(value), content)  # raises if it does not
    assert "keyset-ed25519" in result.stdout


def test_dev_key_set_ed25519_key_is_an_okp_jwk() -> None:
    key = Ed25519DevKey.generate()
    jwk = key.jwk()
    assert (jwk["kty"], jwk["crv"], jwk["use"]) == ("OKP", "Ed25519", "sig")
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    assert raw == key.private_key.public_key().public_bytes_raw()
    assert "d" not in jwk  # the public half only


def test_state_of_a_dead_dev_is_ignored(tmp_path: Path, fake_relay: MakeRelay) -> None:
    relay = fake_relay()
    state_dir = tmp_path / "elsewhere"
    write_state(state_dir, relay.url, RsaSigner(), new_secret())
    state_file = state_dir / dev_state.STATE_FILE
    document = json.loads(state_file.read_text())
    document["pids"]["dev"] = 2**22 + 12345  # above any pid_max: no such process
    state_file.write_text(json.dumps(document))
    result = run("send", env=clean_env({"WEBHOOK_RELAY_STATE": str(state_dir)}), cwd=tmp_path)
    assert_one_error_line(result, "no --url")
    assert relay.received == []


def test_unreachable_url_is_retried_then_one_line(send: Send) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = send("--url", url, "--secret", new_secret(), "--retries", "1", "--backoff", "0")
    assert "attempt 1: no answer (connection to" in result.stdout
    assert "attempt 2: no answer" in result.stdout
    assert_one_error_line(result, "no answer after 2 attempts: connection to", "refused")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["batch.succeded"], ["unknown event type 'batch.succeded'", "batch.succeeded"]),
        (["--secret", "not-a-secret"], ["--secret", "whsec_"]),
        (["--secret", "whsec_***"], ["--secret", "base64"]),
        (["--data", "{not json"], ["--data is not valid JSON"]),
        (["--data", "[1, 2]"], ["--data must be a JSON object"]),
        (["--url", "ftp://example.com"], ["--url must be an http"]),
        (["--url", "nowhere"], ["--url must be an http"]),
        (["--url", "http://127.0.0.1:99999"], ["invalid port"]),
        (["batch.failed", "--file", "-"], ["--file sends a whole body"]),
        (["--scheme", "jwt"], ["--scheme jwt signs with the dev key"]),
        (["--scheme", "keyset"], ["--scheme keyset signs with the dev key set"]),
        (["--scheme", "ed448"], ["--scheme", "ed448"]),
        (["--retries", "-1"], ["--retries"]),
        (["--no-such-option"], ["no-such-option"]),
    ],
)
def test_bad_input_is_one_line(send: Send, args: list[str], needles: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    defaults = [] if "--url" in args else ["--url", url]
    defaults += [] if "--secret" in args else ["--secret", new_secret()]
    started = time.monotonic()
    result = send(*args, *defaults)
    line = assert_one_error_line(result, *needles)
    assert "attempt" not in result.stdout  # refused before anything was sent
    assert time.monotonic() - started < 10
    if "--secret" in args:
        assert args[args.index("--secret") + 1] not in line  # a secret is never echoed


def test_nothing_to_send_to_without_dev(send: Send) -> None:
    assert_one_error_line(send(), "no --url", "webhook-relay dev")
    result = send("--url", "http://127.0.0.1:9")
    assert_one_error_line(result, "no --secret")
