"""The `webhook-relay` command line, run as users run it: the console script, as a subprocess.

One `webhook-relay dev` serves every test that needs the stack (it costs seconds to start);
the test that stops it with SIGINT runs last. If the emulators cannot start, the tests that
need them fail with dev's own output, they are never skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from webhook_relay.emulators import free_port

SCRIPT = Path(sys.executable).parent / "webhook-relay"
START_TIMEOUT_SECONDS = 120.0
LAST = "test_sigint_stops_everything"
# Variables of the relay or the CLI that must not leak from the caller's shell into a test.
_CLEARED = (
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "WEBHOOK_RELAY_STATE",
    "RELAY_ROUTES",
    "RELAY_TOPIC_PREFIX",
    "GOOGLE_CLOUD_PROJECT",
    "WEBHOOK_SIGNING_SECRETS",
    "WEBHOOK_SIGNING_SECRET",
    "WEBHOOK_SIGNING_SECRETS_FILE",
    "GEMINI_JWT_ISSUERS",
    "WEBHOOK_RELAY_DEBUG",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The test that stops the shared `dev` runs right after the last other test using it."""
    last = [item for item in items if item.name == LAST]
    rest = [item for item in items if item.name != LAST]
    users = [
        position
        for position, item in enumerate(rest)
        if "dev_stack" in getattr(item, "fixturenames", ())
    ]
    cut = users[-1] + 1 if users else len(rest)
    items[:] = rest[:cut] + last + rest[cut:]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _CLEARED}
    return env | dict(extra or {})


def run(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """`webhook-relay ARGS…` to completion; stdout and stderr as text."""
    if not SCRIPT.is_file():
        pytest.fail(f"the console script {SCRIPT} is missing: pip install -e '.[dev]'")
    completed = subprocess.run(
        [str(SCRIPT), *args],
        env=dict(env) if env is not None else clean_env(),
        cwd=cwd,
        input=input_bytes,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        completed.args,
        completed.returncode,
        completed.stdout.decode(errors="replace"),
        completed.stderr.decode(errors="replace"),
    )


def assert_one_error_line(
    result: subprocess.CompletedProcess[str], *needles: str, alone: bool = True
) -> str:
    """Exit status non-zero, and one `Error: …` line on stderr, no traceback.

    `alone`: the only line on stderr (bad input, refused before any work). Otherwise the
    last one, after the progress notes of a command that did run.
    """
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if alone:
        assert len(lines) == 1, result.stderr
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def process_alive(pid: int) -> bool:
    """A live process; a zombie (exited, waiting to be reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, …
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@dataclass
class DevStack:
    """A running `webhook-relay dev` and what it wrote to its state dir."""

    process: subprocess.Popen[bytes]
    home: Path
    state_dir: Path
    log: Path
    port: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.state["url"])

    @property
    def project(self) -> str:
        return str(self.state["project"])

    @property
    def pubsub_host(self) -> str:
        return str(self.state["pubsub_host"])

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return clean_env({"WEBHOOK_RELAY_STATE": str(self.state_dir)} | dict(extra or {}))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(*args, env=self.env(), cwd=self.home, timeout=timeout)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_dev(home: Path, args: Sequence[str] = ()) -> DevStack:
    port = free_port()
    state_dir = home / "state"
    log = home / "dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(SCRIPT), "dev", "--port", str(port), "--state-dir", str(state_dir), *args],
            env=clean_env(),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    stack = DevStack(process, home, state_dir, log, port)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    state_file = state_dir / "state.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"`webhook-relay dev` exited with status {process.returncode} before it served "
                f"(are gcloud's Firestore and Pub/Sub emulators and Java installed?):\n"
                f"{stack.output()}",
                pytrace=False,
            )
        if state_file.is_file() and _serves(port):
            stack.state = json.loads(state_file.read_text())
            return stack
        time.sleep(0.2)
    stack.stop(signal.SIGTERM)
    pytest.fail(
        f"`webhook-relay dev` did not serve within {START_TIMEOUT_SECONDS:.0f} s:\n"
        f"{stack.output()}",
        pytrace=False,
    )


def _serves(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    if not SCRIPT.is_file():
        pytest.fail(f"the console script {SCRIPT} is missing: pip install -e '.[dev]'")
    stack = start_dev(tmp_path_factory.mktemp("dev"))
    try:
        yield stack
    finally:
        stack.stop()
