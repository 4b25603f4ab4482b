"""register, rotate, status: refusals and failures, each one `Error:` line with no secret in it.

The CLI runs as a subprocess against the fake Gemini API and the fake Secret Manager (behind
a loopback HTTPS proxy); these failures all end before the relay or Firestore is needed (the
way through them is in tests/integration/test_lifecycle.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.genai import webhooks as gw

from tests.cli.conftest import assert_one_error_line
from tests.support.fake_gemini import Request
from tests.support.lifecycle import API_KEY, PROJECT, SECRET_NAME, World, lifecycle_world
from tests.support.signing import new_secret
from webhook_relay import gemini
from webhook_relay.cli.lifecycle_steps import rotation_entries
from webhook_relay.errors import ConfigError
from webhook_relay.signing_secrets import parse_entries

URL = "https://relay.example.com/"
ARGS = ("--project", PROJECT, "--url", URL)
PLACEHOLDER = new_secret()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with lifecycle_world(tmp_path) as world:
        yield world


def seeded(world: World) -> World:
    world.google.add_secret(SECRET_NAME, (PLACEHOLDER + "\n").encode())
    return world


def error_line(world: World, result: subprocess.CompletedProcess[str], *needles: str) -> str:
    line = assert_one_error_line(result, *needles, alone=False)
    world.assert_no_secret()
    assert API_KEY not in result.stdout + result.stderr
    return line


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["register", "rotate", "status"])
def test_help_names_the_options(world: World, command: str) -> None:
    result = world.cli(command, "--help")
    assert result.returncode == 0
    for option in ("--project", "--url", "--secret NAME"):
        assert option in result.stdout


def test_missing_api_key_is_one_line_before_any_call(world: World) -> None:
    result = world.cli("status", *ARGS, env={"GEMINI_API_KEY": ""})
    assert_one_error_line(result, "GEMINI_API_KEY")
    assert world.gemini.calls == []


def test_api_key_is_read_from_a_file(world: World, tmp_path: Path) -> None:
    key_file = tmp_path / "gemini-api-key"
    key_file.write_text("from-the-file-key\n")
    seeded(world)
    result = world.cli(
        "rotate", *ARGS, env={"GEMINI_API_KEY": "", "GEMINI_API_KEY_FILE": str(key_file)}
    )
    error_line(world, result, f"no webhook is registered for {URL}")
    assert world.gemini.calls[-1].headers["x-goog-api-key"] == "from-the-file-key"
    assert "from-the-file-key" not in result.stderr


def test_unreadable_api_key_file_names_the_variable(world: World, tmp_path: Path) -> None:
    missing = str(tmp_path / "absent")
    result = world.cli("status", *ARGS, env={"GEMINI_API_KEY": "", "GEMINI_API_KEY_FILE": missing})
    assert_one_error_line(result, "GEMINI_API_KEY_FILE", "cannot read the file")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GEMINI_API_BASE_URL": "http://gemini.example.com"}, "GEMINI_API_BASE_URL"),
        ({"GEMINI_API_VERSION": "v1/../x"}, "GEMINI_API_VERSION"),
    ],
)
def test_bad_api_endpoint_is_refused(world: World, env: dict[str, str], needle: str) -> None:
    assert_one_error_line(world.cli("status", *ARGS, env=env), needle)


@pytest.mark.parametrize("url", ["http://relay.example.com/", "ftp://x/", "not a url"])
def test_url_must_be_https_except_loopback(world: World, url: str) -> None:
    result = world.cli("register", "--project", PROJECT, "--url", url)
    assert_one_error_line(result, "--url", "https")
    assert world.gemini.calls == []


def test_unknown_event_type_is_refused_with_the_known_ones(world: World) -> None:
    result = world.cli("register", *ARGS, "--events", "batch.succeeded,batch.exploded")
    assert_one_error_line(result, "batch.exploded", "video.generated", alone=False)
    assert world.gemini.webhooks == {}


@pytest.mark.parametrize(
    ("env", "variable", "problem"),
    [
        ({"GEMINI_API_KEY": "k", "GEMINI_API_KEY_FILE": "/x"}, "GEMINI_API_KEY", "not both"),
        ({"GEMINI_API_KEY": "secret key"}, "GEMINI_API_KEY", "white space"),
        ({"GEMINI_API_KEY_FILE": "EMPTY"}, "GEMINI_API_KEY_FILE", "empty"),
        (
            {"GEMINI_API_KEY": "k", "GEMINI_API_BASE_URL": "http://10.0.0.1"},
            "GEMINI_API_BASE_URL",
            "https",
        ),
    ],
)
def test_client_configuration_errors_name_the_variable_not_the_key(
    tmp_path: Path, env: dict[str, str], variable: str, problem: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    env = {k: str(empty) if v == "EMPTY" else v for k, v in env.items()}
    with pytest.raises(ConfigError) as caught:
        gemini.client_from_env(env)
    assert caught.value.variable == variable
    assert problem in str(caught.value)
    assert "secret key" not in str(caught.value)


def test_client_names_the_api_version_and_takes_a_loopback_endpoint() -> None:
    env = {"GEMINI_API_KEY": "k", "GEMINI_API_BASE_URL": "http://127.0.0.1:9/"}
    assert gemini.api_version(env) == "v1"
    assert gemini.base_url(env) == "http://127.0.0.1:9"
    assert gemini.client_from_env(env) is not None


def test_commands_do_not_load_the_sdk_until_they_run() -> None:
    code = (
        "import sys, webhook_relay.cli;"
        "heavy = [m for m in ('google.genai', 'google.cloud.secretmanager') if m in sys.modules];"
        "sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- Gemini failing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name", "attempts"),
    [(403, "PERMISSION_DENIED", 1), (429, "RESOURCE_EXHAUSTED", 5), (500, "INTERNAL", 5)],
)
def test_gemini_failing_to_list_is_one_line(
    world: World, status: int, name: str, attempts: int
) -> None:
    seeded(world)
    world.gemini.fail(r"/v1/webhooks", status, times=-1, method="GET")
    result = world.cli("register", *ARGS)
    error_line(world, result, f"Gemini API: listing webhooks answered HTTP {status} ({name}")
    # The SDK's own retries (429 and 5xx, not 403) ran before the command gave up.
    assert len(world.gemini.calls_to("GET", r"/v1/webhooks")) == attempts
    assert world.gemini.webhooks == {}
    assert world.versions() == 1


def test_gemini_refusing_to_create_writes_nothing(world: World) -> None:
    seeded(world)
    world.gemini.fail(r"/v1/webhooks", 403, method="POST")
    result = world.cli("register", *ARGS)
    error_line(world, result, "creating the webhook answered HTTP 403", "Nothing was created")
    assert world.versions() == 1


def test_create_is_not_retried_blindly(world: World) -> None:
    # A retried create whose first answer was lost would make a second webhook.
    seeded(world)
    world.gemini.fail(r"/v1/webhooks", 500, method="POST")
    result = world.cli("register", *ARGS)
    error_line(world, result, "creating the webhook answered HTTP 500", "Nothing was created")
    assert len(world.gemini.calls_to("POST", r"/v1/webhooks")) == 1


def test_create_that_happened_without_an_answer_says_to_rotate(world: World) -> None:
    seeded(world)

    def lost_answer(request: Request) -> tuple[int, object]:
        world.gemini.add_webhook(gw.WebhookInput.model_validate(request.body).uri)
        return 503, {"error": {"code": 503, "message": "backend timeout", "status": "UNAVAILABLE"}}

    world.gemini.route("POST", r"/v1/webhooks", lost_answer)
    result = world.cli("register", *ARGS)
    (hook,) = world.gemini.webhooks.values()
    error_line(
        world,
        result,
        f"yet webhook {hook.id} now exists",
        f"run `webhook-relay rotate --project {PROJECT} --url {URL}`",
    )
    assert world.versions() == 1


def test_gemini_failing_to_rotate_changes_nothing(world: World) -> None:
    seeded(world)
    world.gemini.add_webhook(URL)
    world.gemini.fail(r"/v1/webhooks/[^/]+:rotateSigningSecret", 500, times=-1)
    result = world.cli("rotate", *ARGS)
    error_line(world, result, "answered HTTP 500", "Nothing was changed.")
    assert world.versions() == 1


def test_rotation_answered_without_a_secret_says_to_rotate_again(world: World) -> None:
    seeded(world)
    hook = world.gemini.add_webhook(URL)
    world.gemini.route("POST", r"/v1/webhooks/[^/]+:rotateSigningSecret", lambda _: (200, {}))
    result = world.cli("rotate", *ARGS)
    error_line(
        world,
        result,
        f"Gemini rotated, but its answer held no webhook {hook.id}'s new signing secret",
        "rotate --project",
    )
    assert world.versions() == 1


def test_status_with_gemini_failing(world: World) -> None:
    world.gemini.fail(r"/v1/webhooks", 429, times=-1)
    error_line(world, world.cli("status", *ARGS), "answered HTTP 429 (RESOURCE_EXHAUSTED")


# --- Secret Manager failing -----------------------------------------------------------------------


def test_secret_manager_down_after_create_says_how_to_recover(world: World) -> None:
    seeded(world)
    world.google.fail(r":addVersion$", 503, times=-1)
    result = world.cli("register", *ARGS)
    (hook,) = world.gemini.webhooks.values()
    line = error_line(
        world,
        result,
        f"Gemini created webhook {hook.id} for {URL}, but writing its signing secret",
        "HTTP 503 UNAVAILABLE",
        f"run `webhook-relay rotate --project {PROJECT} --url {URL}`",
    )
    assert "shows a webhook's secret only once" in line
    assert world.versions() == 1


def test_missing_write_permission_is_found_before_gemini_is_asked(world: World) -> None:
    seeded(world)
    world.google.denied = {"secretmanager.versions.add"}
    result = world.cli("register", *ARGS)
    error_line(world, result, "lack secretmanager.versions.add")
    assert world.gemini.calls_to("POST", r"/v1/webhooks") == []
    world.gemini.add_webhook(URL)
    error_line(world, world.cli("rotate", *ARGS), "lack secretmanager.versions.add")
    assert world.gemini.calls_to("POST", r".*:rotateSigningSecret") == []


def test_unreadable_secret_version_stops_before_gemini(world: World) -> None:
    world.google.add_secret(SECRET_NAME, b"whsec_this-is*not-base64\n")
    world.gemini.add_webhook(URL)
    result = world.cli("rotate", *ARGS)
    line = error_line(world, result, SECRET_NAME, "version 1", "entry 1")
    assert "this-is" not in line
    assert world.gemini.calls == []


def test_secret_manager_refusing_reads_is_one_line(world: World) -> None:
    seeded(world)
    world.google.fail(r":access$", 403, times=-1)
    error_line(world, world.cli("rotate", *ARGS), "Secret Manager answered HTTP 403")


def test_no_credentials_is_one_line(world: World, tmp_path: Path) -> None:
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json")}
    error_line(world, world.cli("rotate", *ARGS, env=env), "credentials")


def test_rotate_needs_a_version_and_a_webhook(world: World) -> None:
    error_line(world, world.cli("rotate", *ARGS), "has no version yet", "register")
    seeded(world)
    error_line(world, world.cli("rotate", *ARGS), f"no webhook is registered for {URL}")


# --- the version rotate writes ------------------------------------------------------------------


def test_rotation_keeps_previous_secrets_with_gemini_expiry() -> None:
    now = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
    old_gemini, placeholder, new = new_secret(), new_secret(), new_secret()
    gone = now - timedelta(minutes=1)
    previous = parse_entries(
        f"{old_gemini} {placeholder} {new_secret()};expires={gone.isoformat()}", "V"
    )
    expiry = now + timedelta(hours=24)
    hook = gw.Webhook.model_validate(
        {
            "uri": URL,
            "subscribed_events": ["batch.succeeded"],
            "id": "wh_1",
            "signing_secrets": [
                {"truncated_secret": old_gemini[:10] + "...", "expire_time": expiry},
                {"truncated_secret": new[:10] + "..."},
            ],
        }
    )
    (fresh,) = parse_entries(new, "V")
    entries, dropped = rotation_entries(previous, [(hook, fresh, hook)], now)
    assert [e.text for e in entries] == [new, old_gemini, placeholder]
    assert [e.expires_at for e in entries] == [None, expiry, expiry]
    assert dropped == 1


def test_rotation_without_a_reported_expiry_keeps_the_previous_secret_open() -> None:
    now = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
    previous = parse_entries(new_secret(), "V")
    (fresh,) = parse_entries(new_secret(), "V")
    hook = gw.Webhook.model_validate({"uri": URL, "subscribed_events": [], "id": "wh_1"})
    entries, _ = rotation_entries(previous, [(hook, fresh, None)], now)
    assert [e.expires_at for e in entries] == [None, None]
