"""Help and refusals of every command, without the emulators."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cli.conftest import assert_one_error_line, clean_env, run
from webhook_relay.cli import cli, main
from webhook_relay.emulators import free_port

COMMANDS = ["dev", "send", "tail", "redrive"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_command_has_help(command: str) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(cli, args, prog_name="webhook-relay")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: webhook-relay {command}".rstrip())
    assert "--help" in result.output
    if command:
        assert "--state-dir" in result.output


def test_console_script_help_and_version(tmp_path: Path) -> None:
    result = run("--help", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    version = run("--version", env=clean_env(), cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.startswith("webhook-relay, version ")


def test_unknown_command_is_one_line(tmp_path: Path) -> None:
    result = run("sned", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert_one_error_line(result, "No such command 'sned'")


def test_main_returns_the_status_instead_of_exiting() -> None:
    assert main(["--help"]) == 0
    assert main(["send", "--scheme", "nope"]) == 2


def test_tail_with_no_emulator_is_one_line(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    result = run(
        "tail", "--timeout", "1", env=clean_env({"PUBSUB_EMULATOR_HOST": host}), cwd=tmp_path
    )
    assert_one_error_line(result, f"no Pub/Sub emulator answers at {host}")


def test_tail_and_redrive_need_a_project_for_real_pubsub(tmp_path: Path) -> None:
    assert_one_error_line(run("tail", env=clean_env(), cwd=tmp_path), "--project")
    result = run("redrive", "--subscription", "s-dead", env=clean_env(), cwd=tmp_path)
    assert_one_error_line(result, "--project")


def test_redrive_needs_a_subscription(tmp_path: Path) -> None:
    result = run("redrive", env=clean_env(), cwd=tmp_path)
    assert_one_error_line(result, "--subscription")


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"RELAY_ROUTES": "{not json"}, ["RELAY_ROUTES", "not valid JSON"]),
        ({"RELAY_TOPIC_PREFIX": "9bad"}, ["RELAY_TOPIC_PREFIX"]),
        ({"WEBHOOK_SIGNING_SECRETS_FILE": "/nonexistent/secrets"}, ["SECRETS_FILE"]),
    ],
)
def test_dev_refuses_bad_configuration_before_starting_anything(
    tmp_path: Path, env: dict[str, str], needles: list[str]
) -> None:
    result = run(
        "dev", "--port", str(free_port()), "--state-dir", str(tmp_path / "state"),
        env=clean_env(env), cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert_one_error_line(result, "bad configuration", *needles)
    assert not (tmp_path / "state").exists()


def test_dev_refuses_emulator_hosts_that_do_not_answer(tmp_path: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    result = run(
        "dev", "--port", str(free_port()), "--state-dir", str(tmp_path / "state"),
        env=clean_env({"PUBSUB_EMULATOR_HOST": host, "FIRESTORE_EMULATOR_HOST": host}),
        cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert_one_error_line(result, f"={host} but no emulator answers there")
