"""The lifecycle commands' world: fake Gemini, fake Secret Manager, the CLI as users run it."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.cli.conftest import clean_env, run
from webhook_relay.cli.secret_store import RETRY_VARIABLE
from webhook_relay.signing_secrets import Secret, parse_entries

from .fake_gemini import FakeGemini
from .fake_google import FakeGoogle

PROJECT = "relay-test"
SECRET_NAME = "gemini-webhook-relay-signing-secrets"
API_KEY = "AIzaFAKE-test-api-key-0123456789"
# The caller's shell must not point these tests anywhere else.
_CLEARED = (
    "GEMINI_API_KEY",
    "GEMINI_API_KEY_FILE",
    "GEMINI_API_BASE_URL",
    "GEMINI_API_VERSION",
    "RELAY_PUBLIC_URL",
    "RELAY_DEDUP_COLLECTION",
    "RELAY_JOBS_COLLECTION",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@dataclass
class World:
    gemini: FakeGemini
    google: FakeGoogle
    env: dict[str, str]
    outputs: list[str] = field(default_factory=list)

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = run(*args, env=self.env | dict(env or {}), cwd=self.google.directory, timeout=120)
        self.outputs += [result.stdout, result.stderr]
        return result

    def secrets(self) -> list[str]:
        """Every secret either fake ever held: none may appear in any output."""
        values = list(self.gemini.issued)
        for secret in self.google.secrets.values():
            for version in secret.versions:
                values += version.data.decode(errors="replace").split()
        bare = [v.split(";")[0] for v in values]
        return [*bare, *(v.removeprefix("whsec_") for v in bare)]

    def assert_no_secret(self, *texts: str) -> None:
        everything = "\n".join([*self.outputs, *texts])
        leaked = [value[:12] for value in self.secrets() if value and value in everything]
        assert not leaked, f"secret values in the output, starting {leaked}"

    def versions(self) -> int:
        secret = self.google.secret(SECRET_NAME)
        return len(secret.versions) if secret else 0

    def stored(self) -> list[str]:
        """The latest version of the relay's secret, one entry a line."""
        secret = self.google.secret(SECRET_NAME)
        latest = secret.latest() if secret else None
        return latest.data.decode().split() if latest else []

    def stored_entries(self) -> dict[bytes, Secret]:
        """The latest version's entries by key."""
        return {e.key: e for e in parse_entries("\n".join(self.stored()), "stored")}


def key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_").split(";")[0])


@contextmanager
def lifecycle_world(directory: Path, extra: Mapping[str, str] | None = None) -> Iterator[World]:
    with FakeGemini() as gemini, FakeGoogle(directory, PROJECT) as google:
        env = {k: v for k, v in clean_env().items() if k not in _CLEARED}
        env |= google.env() | {
            "GEMINI_API_KEY": API_KEY,
            "GEMINI_API_BASE_URL": gemini.url,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            # A Secret Manager that stays down is given up on after 3 s here, not a minute
            # (the minute itself: tests/cli/test_lifecycle.py, with an injected clock).
            RETRY_VARIABLE: "3",
        }
        yield World(gemini, google, env | dict(extra or {}))
