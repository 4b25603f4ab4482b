"""Start-up: a bad configuration is one clear log line and an exit, never a per-request error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from webhook_relay.app import start
from webhook_relay.errors import ConfigError

from .support.signing import new_secret

GOOD = {"WEBHOOK_SIGNING_SECRETS": new_secret(), "GOOGLE_CLOUD_PROJECT": "p", "GEMINI_JWKS_URL": ""}


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WEBHOOK_SIGNING_SECRETS", "whsec_not*base64"),
        ("GEMINI_JWKS_URL", "http://keys.example.com/jwks.json"),
        ("RELAY_ROUTES", "{not json"),
        ("RELAY_DEDUP_TTL_HOURS", "12"),
        ("GEMINI_DYNAMIC_WEBHOOKS", "yes"),
    ],
)
def test_bad_variable_exits_with_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        start(GOOD | {variable: value})

    assert exited.value.code == 1
    [line] = log_lines(capsys)
    assert line["severity"] == "CRITICAL"
    assert line["variable"] == variable
    assert variable in line["message"]
    assert value not in line["message"]


def test_no_verification_method_is_a_start_up_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        start({"GOOGLE_CLOUD_PROJECT": "p", "GEMINI_JWKS_URL": ""})
    [line] = log_lines(capsys)
    assert "no verification method" in line["message"]


def test_emulators_without_a_project_is_a_start_up_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"WEBHOOK_SIGNING_SECRETS": new_secret(), "PUBSUB_EMULATOR_HOST": "127.0.0.1:1"}
    with pytest.raises(SystemExit):
        start(env)
    [line] = log_lines(capsys)
    assert line["variable"] == "GOOGLE_CLOUD_PROJECT"


def test_ready_line_names_schemes_and_topics_but_no_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = new_secret()
    start(GOOD | {"WEBHOOK_SIGNING_SECRETS": secret})

    [ready] = log_lines(capsys)
    assert ready["message"] == "webhook relay ready"
    assert ready["schemes"] == ["hmac"]
    assert "gemini-unrouted" in ready["topics"]
    assert secret.removeprefix("whsec_") not in json.dumps(ready)


@pytest.mark.parametrize(
    ("audience", "warning"), [(None, "GEMINI_JWT_AUDIENCE is unset"), ("*", "any audience")]
)
def test_jwt_audience_warnings_at_start_up(
    capsys: pytest.CaptureFixture[str], audience: str | None, warning: str
) -> None:
    env = GOOD | {"GEMINI_JWKS_URL": "https://keys.example.com/jwks.json"}
    if audience is not None:
        env["GEMINI_JWT_AUDIENCE"] = audience

    start(env)

    warnings = [line["message"] for line in log_lines(capsys) if line["severity"] == "WARNING"]
    assert len(warnings) == 1
    assert warning in warnings[0]


def test_dynamic_webhooks_alone_start_a_relay(capsys: pytest.CaptureFixture[str]) -> None:
    start({"GOOGLE_CLOUD_PROJECT": "p", "GEMINI_DYNAMIC_WEBHOOKS": "true"})
    ready = [line for line in log_lines(capsys) if line["message"] == "webhook relay ready"]
    assert [line["schemes"] for line in ready] == [["keyset-ed25519"]]


def test_dynamic_webhooks_without_a_key_set_exit_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        start(GOOD | {"GEMINI_DYNAMIC_WEBHOOKS": "true", "GEMINI_JWKS_URL": ""})
    [line] = log_lines(capsys)
    assert line["variable"] == "GEMINI_DYNAMIC_WEBHOOKS"


def test_config_error_names_its_variable() -> None:
    assert str(ConfigError("RELAY_ROUTES", "bad")) == "RELAY_ROUTES: bad"
