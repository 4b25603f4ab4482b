"""The Firestore and Pub/Sub emulators, started from the gcloud CLI on free loopback ports.

Used by `webhook-relay dev`, the integration tests and the benchmarks. Each emulator runs in
its own process group, so stopping it also stops the Java server that gcloud starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

START_TIMEOUT_SECONDS = 60.0
COMMANDS = {
    "firestore": ["emulators", "firestore", "start", "--database-mode=firestore-native"],
    "pubsub": ["beta", "emulators", "pubsub", "start"],
}
ENV_VARIABLES = {"firestore": "FIRESTORE_EMULATOR_HOST", "pubsub": "PUBSUB_EMULATOR_HOST"}


class EmulatorError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Emulator:
    def __init__(self, kind: str, port: int | None = None) -> None:
        if kind not in COMMANDS:
            raise ValueError(f"unknown emulator {kind!r}")
        self.kind = kind
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.env_variable = ENV_VARIABLES[kind]
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.gettempdir()) / f"webhook-relay-{kind}-{self.port}.log"

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Emulator:
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise EmulatorError("the gcloud CLI is not on PATH; the emulators come with it")
        command = [gcloud, *COMMANDS[self.kind], f"--host-port={self.host}", "--quiet"]
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - fixed command, our arguments
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorError(f"{self.kind} emulator exited at start:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise EmulatorError(f"{self.kind} emulator not ready after {timeout:.0f} s")

    def ready(self) -> bool:
        return answers(self.host)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            # gcloud may exit before its Java child: wait until the whole group is gone.
            stop_process_group(process)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process_group(process: subprocess.Popen[bytes], patience: float = 5.0) -> None:
    """SIGTERM to the process's whole group (it was started with `start_new_session`),
    SIGKILL if it lingers; returns once the group is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            process.poll()  # reap the leader, or the group never looks empty
            if not _group_alive(process.pid):
                return
            time.sleep(0.05)
    process.poll()


def answers(host: str, timeout: float = 1.0) -> bool:
    """An emulator answers 200 on `/`: a quick check, where gRPC would retry for seconds."""
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout) as answer:
            return bool(answer.status == 200)
    except (OSError, ValueError):  # URLError is an OSError; ValueError: a malformed host
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reset_firestore(host: str, project: str) -> None:
    """Delete every document (the emulator's own endpoint)."""
    request = urllib.request.Request(
        f"http://{host}/emulator/v1/projects/{project}/databases/(default)/documents",
        method="DELETE",
    )
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310
        pass
