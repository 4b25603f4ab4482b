"""register, rotate, status: refusals and failures, each one `Error:` line with no secret in it.

The CLI runs as a subprocess against the fake Gemini API and the fake Secret Manager (behind
a loopback HTTPS proxy); these failures all end before the relay or Firestore is needed (the
way through them is in tests/integration/test_lifecycle.py).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.genai import webhooks as gw

from tests.cli.conftest import assert_one_error_line
from tests.support.fake_gemini import Request
from tests.support.fake_google import RESET, Call
from tests.support.lifecycle import API_KEY, PROJECT, SECRET_NAME, World, key, lifecycle_world
from tests.support.signing import new_secret
from webhook_relay import cli as cli_package
from webhook_relay import gemini
from webhook_relay.cli.lifecycle_steps import rotation_entries
from webhook_relay.cli.secret_store import SecretStore, SecretStoreError
from webhook_relay.errors import ConfigError
from webhook_relay.signing_secrets import Secret, parse_entries

URL = "https://relay.example.com/"
OTHER_URL = "https://relay-abc123-ew.a.run.app/"
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

NOW = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
EXPIRY = NOW + timedelta(hours=24)


def after_rotation(hook_id: str, expiring: str, new: str) -> gw.Webhook:
    """The webhook as Gemini reports it after a rotation: the old secret expiring in 24 h."""
    return gw.Webhook.model_validate(
        {
            "uri": URL,
            "subscribed_events": ["batch.succeeded"],
            "id": hook_id,
            "signing_secrets": [
                {"truncated_secret": expiring[:10] + "...", "expire_time": EXPIRY},
                {"truncated_secret": new[:10] + "..."},
            ],
        }
    )


def at_second(moment: datetime | None) -> datetime | None:
    """An expiry as the secrets format stores it (RFC 3339, whole seconds)."""
    return moment.replace(microsecond=0) if moment else None


def one(secret: str) -> Secret:
    (entry,) = parse_entries(secret, "V")
    return entry


def test_rotation_expires_only_the_rotated_webhooks_secrets() -> None:
    mine, theirs, new = new_secret(), new_secret(), new_secret()
    gone = NOW - timedelta(minutes=1)
    previous = parse_entries(
        f"{mine};webhook=wh_a {theirs};webhook=wh_b "
        f"{new_secret()};webhook=wh_a;expires={gone.isoformat()}",
        "V",
    )
    hook = after_rotation("wh_a", mine, new)
    plan = rotation_entries(previous, [(hook, one(new), hook)], NOW, [hook])
    assert [(e.text, e.webhook, e.expires_at) for e in plan.entries] == [
        (new, "wh_a", None),
        (mine, "wh_a", EXPIRY),
        (theirs, "wh_b", None),  # another webhook's current secret: never expired here
    ]
    assert [e.text for e in plan.foreign] == [theirs]
    assert plan.dropped == 1


def test_untagged_secret_is_expired_only_when_provably_the_webhooks() -> None:
    old, placeholder, new = new_secret(), new_secret(), new_secret()
    previous = parse_entries(f"{old} {placeholder}", "V")
    hook = after_rotation("wh_a", old, new)
    plan = rotation_entries(previous, [(hook, one(new), hook)], NOW, [hook])
    assert [(e.text, e.webhook, e.expires_at) for e in plan.entries] == [
        (new, "wh_a", None),
        (old, "wh_a", EXPIRY),  # the one Gemini reports expiring: now named
        (placeholder, None, None),
    ]
    assert [e.text for e in plan.untagged] == [placeholder]


@pytest.mark.parametrize("why", ["two webhooks for the URL", "another webhook's secret stored"])
def test_untagged_secret_is_left_alone_when_another_webhook_may_use_it(why: str) -> None:
    old, new = new_secret(), new_secret()
    hook = after_rotation("wh_a", old, new)
    other = gw.Webhook.model_validate({"uri": URL, "subscribed_events": [], "id": "wh_z"})
    if why == "two webhooks for the URL":
        previous, registered = parse_entries(old, "V"), [hook, other]
    else:
        previous, registered = parse_entries(f"{old} {new_secret()};webhook=wh_b", "V"), [hook]
    plan = rotation_entries(previous, [(hook, one(new), hook)], NOW, registered)
    assert [e.expires_at for e in plan.entries] == [None] * (len(previous) + 1)
    assert [e.text for e in plan.untagged] == [old]


def test_rotation_without_a_reported_expiry_keeps_the_previous_secret_open() -> None:
    previous = parse_entries(new_secret() + ";webhook=wh_1", "V")
    hook = gw.Webhook.model_validate({"uri": URL, "subscribed_events": [], "id": "wh_1"})
    plan = rotation_entries(previous, [(hook, one(new_secret()), None)], NOW, [hook])
    assert [e.expires_at for e in plan.entries] == [None, None]


def test_rotate_of_one_url_leaves_the_other_webhooks_secret_alone(world: World) -> None:
    a = world.gemini.add_webhook(URL, id="wh_a")
    b = world.gemini.add_webhook(OTHER_URL, id="wh_b")
    old_a, old_b = a.secrets[0].value, b.secrets[0].value
    world.google.add_secret(SECRET_NAME, f"{old_a};webhook=wh_a\n{old_b};webhook=wh_b\n".encode())
    result = world.cli("rotate", *ARGS)
    assert result.returncode == 0, result.stderr
    stored = world.stored_entries()
    assert stored[key(old_b)].expires_at is None  # B's deliveries keep verifying
    assert stored[key(old_a)].expires_at == at_second(a.secrets[0].expire_time)
    assert stored[key(a.secrets[-1].value)].webhook == "wh_a"
    assert "Left 1 secret of other webhooks as it is (webhook wh_b)." in result.stdout
    assert result.stdout.splitlines()[-1].startswith(f"Stored projects/{PROJECT}/secrets/")
    world.assert_no_secret()


# --- Secret Manager failing for a moment ----------------------------------------------------


@pytest.mark.parametrize("status", [503, 504, 429, RESET])
def test_a_transient_secret_manager_error_does_not_lose_the_new_secret(
    world: World, status: int
) -> None:
    hook = world.gemini.add_webhook(URL, id="wh_a")
    world.google.add_secret(SECRET_NAME, f"{hook.secrets[0].value};webhook=wh_a\n".encode())
    world.google.fail(r":addVersion$", status, times=2)
    result = world.cli("rotate", *ARGS)
    assert result.returncode == 0, result.stderr
    assert key(hook.secrets[-1].value) in world.stored_entries()
    assert result.stderr.count("retrying in") == 2
    world.assert_no_secret()


class FakeTime:
    """The backoff's clock and sleep: a minute passes in no time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def google_env(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    for name, value in world.google.env().items():
        monkeypatch.setenv(name, value)
    return world


def test_secret_manager_down_is_retried_for_about_a_minute_then_reported(
    google_env: World,
) -> None:
    world = google_env
    seeded(world)
    world.google.fail(r":addVersion$", 503, times=-1)
    fake = FakeTime()
    store = SecretStore(
        f"projects/{PROJECT}/secrets/{SECRET_NAME}", sleep=fake.sleep, clock=lambda: fake.now
    )
    with pytest.raises(SecretStoreError) as caught:
        store.write(lambda base: (one(new_secret()),), NOW)
    assert "HTTP 503 UNAVAILABLE" in str(caught.value)
    assert 55 <= sum(fake.sleeps) <= 60
    assert fake.sleeps[:3] == [0.5, 1.0, 2.0]  # backing off, not hammering
    assert world.versions() == 1


def test_a_permanent_refusal_is_not_retried(google_env: World) -> None:
    world = google_env
    seeded(world)
    world.google.fail(r":addVersion$", 403, times=-1)
    fake = FakeTime()
    store = SecretStore(
        f"projects/{PROJECT}/secrets/{SECRET_NAME}", sleep=fake.sleep, clock=lambda: fake.now
    )
    with pytest.raises(SecretStoreError, match="HTTP 403"):
        store.write(lambda base: (one(new_secret()),), NOW)
    assert fake.sleeps == []


# --- two commands at once -------------------------------------------------------------------


def test_two_concurrent_rotates_keep_each_others_secret(world: World) -> None:
    a = world.gemini.add_webhook(URL, id="wh_a")
    b = world.gemini.add_webhook(OTHER_URL, id="wh_b")
    world.google.add_secret(
        SECRET_NAME,
        f"{a.secrets[0].value};webhook=wh_a\n{b.secrets[0].value};webhook=wh_b\n".encode(),
    )
    # Forced, not timed: the first run's add waits until the second run's add arrives, so both
    # read version 1 and each writes a version without the other's new secret.
    second_add = threading.Event()
    adds: list[Call] = []

    def interleave(call: Call) -> None:
        if call.method == "POST" and call.path.endswith(":addVersion"):
            adds.append(call)
            if len(adds) == 1:
                assert second_add.wait(60), "the second rotate never wrote"
            elif len(adds) == 2:
                second_add.set()

    world.google.before_call = interleave
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def rotate(url: str) -> None:
        results[url] = world.cli("rotate", "--project", PROJECT, "--url", url)

    runs = [threading.Thread(target=rotate, args=(url,)) for url in (URL, OTHER_URL)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(120)
    assert all(r.returncode == 0 for r in results.values()), [r.stderr for r in results.values()]
    assert len(adds) >= 3  # the two racing versions, then at least one merged one
    stored = world.stored_entries()
    for hook in (a, b):
        assert stored[key(hook.secrets[-1].value)].expires_at is None
        assert stored[key(hook.secrets[0].value)].expires_at == at_second(
            hook.secrets[0].expire_time
        )
    world.assert_no_secret()


# --- one owner for the shared constant ------------------------------------------------------


def test_lifecycle_modules_import_no_circle() -> None:
    package = Path(cli_package.__file__).parent
    imported = {
        name: {
            node.module
            for node in ast.walk(ast.parse((package / f"{name}.py").read_text()))
            if isinstance(node, ast.ImportFrom) and node.level == 1
        }
        for name in ("lifecycle", "lifecycle_steps", "_common")
    }
    assert "lifecycle" not in imported["lifecycle_steps"]
    assert not {"lifecycle", "lifecycle_steps"} & imported["_common"]
    owners = [
        path.name
        for path in package.glob("*.py")
        if re.search(r"^DEFAULT_SECRET\b.*=", path.read_text(), re.MULTILINE)
    ]
    assert owners == ["_common.py"]
