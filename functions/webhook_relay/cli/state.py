"""The dev state directory: what `webhook-relay dev` tells the other commands.

`state.json` (owner-only: it holds the development secret) and the JWT private key. Written
once the relay answers, removed when `dev` stops; a file left behind by a `dev` that was
killed is recognised by its dead process id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

DEFAULT_STATE_DIR = ".webhook-relay"
STATE_ENV = "WEBHOOK_RELAY_STATE"
STATE_FILE = "state.json"
KEY_FILE = "jwt-private-key.pem"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class DevState:
    url: str
    secret: str
    jwks_url: str
    kid: str
    private_key: str  # path of the PEM file
    project: str
    prefix: str
    firestore_host: str
    pubsub_host: str
    topics: list[str]
    subscriptions: dict[str, str]  # subscription id -> topic id
    pids: dict[str, int | None] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, raw: str) -> DevState:
        document: Any = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return cls(**document)

    def dev_alive(self) -> bool:
        pid = self.pids.get("dev")
        return pid is not None and process_alive(pid)


def state_dir_option() -> Callable[[F], F]:
    """`--state-dir`, shared by every command."""
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_STATE_DIR,
        envvar=STATE_ENV,
        show_default=True,
        show_envvar=True,
        help="Directory where `webhook-relay dev` writes its state (URL, secret, key, hosts).",
    )


def load(state_dir: Path) -> DevState | None:
    """The state of a running `dev`, or None (no state, unreadable, or its `dev` is gone)."""
    state = read(state_dir)
    if state is None or not state.dev_alive():
        return None
    return state


def read(state_dir: Path) -> DevState | None:
    try:
        return DevState.from_json((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None


def write(state_dir: Path, state: DevState) -> Path:
    path = state_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # the mode of open() applies only to a file it creates
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(state.to_json())
    temporary.replace(path)
    return path


def prepare(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)  # mkdir's mode applies only to a directory it creates


def remove(state_dir: Path) -> None:
    for name in (STATE_FILE, KEY_FILE):
        (state_dir / name).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
