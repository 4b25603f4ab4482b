"""The relay's signing-secret secret in Secret Manager: read the latest version, add one.

Versions are only ever added, never disabled or destroyed: the history is the operator's
rollback. Errors are `SecretStoreError`, one line without any secret; what Google said (its
status and message) is kept, since an error answer never holds the payload.

`write` is how a secret Gemini showed once gets stored: transient errors are retried for about
a minute (a duplicate version is harmless), and since AddSecretVersion has no precondition, the
versions added by anyone else since the one it started from are read back after the add and
merged in, until the latest version holds them all.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypeVar

import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.cloud import secretmanager

from ..errors import ConfigError
from ..signing_secrets import Secret, format_entries, parse_entries

T = TypeVar("T")
Client = secretmanager.SecretManagerServiceClient
CALL_SECONDS = 20.0
# What register and rotate need, checked before Gemini is asked for a secret, so that a
# missing grant cannot leave a secret Gemini showed once with nowhere to go.
WRITE_PERMISSIONS = ("secretmanager.versions.add", "secretmanager.versions.access")
# How long a write keeps retrying transient errors (the contract: about a minute); the variable
# only shortens it, for tests of a Secret Manager that stays down.
RETRY_SECONDS = 60.0
RETRY_VARIABLE = "WEBHOOK_RELAY_SECRET_RETRY_SECONDS"
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 10.0
# Rounds of add, read back, merge: each lost round means another command wrote meanwhile.
MERGE_ROUNDS = 5
# Versions read back per round: more writers than this at once is not a rotation.
MAX_CONCURRENT_VERSIONS = 20
TRANSIENT = (
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
    api_exceptions.DeadlineExceeded,
    api_exceptions.TooManyRequests,
    api_exceptions.RetryError,
    requests.ConnectionError,  # a connection reset or refused, a proxy gone
    requests.Timeout,
    google.auth.exceptions.TransportError,
)


class SecretStoreError(Exception):
    pass


class TransientError(SecretStoreError):
    """Worth retrying: Secret Manager busy, unavailable, slow, or the connection broke."""


@dataclass(frozen=True)
class Latest:
    version: str  # the version number
    entries: tuple[Secret, ...]


@dataclass(frozen=True)
class Written:
    version: str  # the version holding `entries` (and whatever others added meanwhile)
    entries: tuple[Secret, ...]
    merged: int  # versions of other commands merged in


def merge(mine: Sequence[Secret], others: Iterable[Secret], now: datetime) -> tuple[Secret, ...]:
    """`mine` plus every live secret of `others` it lacks; a secret in both keeps the earlier
    expiry (a rotation elsewhere set it) and either's webhook tag."""
    merged = {entry.key: entry for entry in mine}
    for other in others:
        if other.key not in merged:
            if other.live(now.timestamp()):
                merged[other.key] = other
            continue
        entry = merged[other.key]
        expiries = [e for e in (entry.expires_at, other.expires_at) if e is not None]
        merged[other.key] = entry.expiring(min(expiries, default=None)).tagged(
            entry.webhook or other.webhook
        )
    return tuple(merged.values())


def _same(a: Sequence[Secret], b: Sequence[Secret]) -> bool:
    return {(e.key, e.expires_at) for e in a} == {(e.key, e.expires_at) for e in b}


def resource_name(project: str, secret: str) -> str:
    if secret.startswith("projects/"):
        if not re.fullmatch(r"projects/[^/]+/secrets/[A-Za-z0-9_-]{1,255}", secret):
            raise SecretStoreError(f"--secret {secret}: not projects/PROJECT/secrets/NAME")
        return secret
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret):
        raise SecretStoreError(f"--secret {secret}: a secret id is letters, digits, - and _")
    return f"projects/{project}/secrets/{secret}"


class SecretStore:
    def __init__(
        self,
        name: str,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float | None = None,
    ) -> None:
        self.name = name
        self._client: Client | None = None
        self._sleep, self._clock = sleep, clock
        if retry_seconds is None:
            retry_seconds = float(os.environ.get(RETRY_VARIABLE) or RETRY_SECONDS)
        self._retry_seconds = retry_seconds

    def write(
        self,
        build: Callable[[Latest | None], tuple[Secret, ...]],
        now: datetime,
        on_retry: Callable[[str], None] | None = None,
    ) -> Written:
        """Add a version holding `build(latest)`, merged with whatever other commands added
        meanwhile. Raises `SecretStoreError` when Secret Manager stays unavailable."""
        base = self._retrying(self.read_latest, on_retry)
        entries = build(base)
        seen = int(base.version) if base else 0
        merged = 0
        for _ in range(MERGE_ROUNDS):
            ours = int(self._retrying(partial(self.add, entries), on_retry))
            latest = self._retrying(self.read_latest, on_retry)
            top = int(latest.version) if latest else ours
            others = [n for n in range(seen + 1, top + 1) if n != ours]
            if not others:
                return Written(str(ours), entries, merged)
            if len(others) > MAX_CONCURRENT_VERSIONS:
                others = others[-MAX_CONCURRENT_VERSIONS:]
            found = [
                entry
                for number in others
                for entry in self._retrying(partial(self.read, number), on_retry)
            ]
            merged += len(others)
            wanted = merge(entries, found, now)
            seen = top
            if latest is not None and _same(latest.entries, merge(latest.entries, wanted, now)):
                # The latest version already holds every secret either command added.
                return Written(latest.version, latest.entries, merged)
            entries = wanted
        raise SecretStoreError(
            f"{self.name}: other commands kept adding versions ({MERGE_ROUNDS} rounds)"
        )

    def read_latest(self) -> Latest | None:
        """The latest version's entries; None when the secret or any version is missing."""
        try:
            answer = self._access("latest")
        except api_exceptions.NotFound:
            return None
        version = answer.name.rpartition("/")[2]
        return Latest(version, self._entries(answer, version))

    def read(self, number: int) -> tuple[Secret, ...]:
        """One version's entries; none when it is gone (destroyed or disabled by someone)."""
        try:
            answer = self._access(str(number))
        except (api_exceptions.NotFound, api_exceptions.FailedPrecondition):
            return ()
        return self._entries(answer, str(number))

    def _access(self, version: str) -> secretmanager.AccessSecretVersionResponse:
        return self._call(
            lambda client: client.access_secret_version(
                name=f"{self.name}/versions/{version}",
                retry=Retry(timeout=CALL_SECONDS),
                timeout=CALL_SECONDS,
            ),
            expected=(api_exceptions.NotFound, api_exceptions.FailedPrecondition),
        )

    def _entries(
        self, answer: secretmanager.AccessSecretVersionResponse, version: str
    ) -> tuple[Secret, ...]:
        try:
            text = bytes(answer.payload.data).decode("utf-8")
            return parse_entries(text, f"{self.name}, version {version}")
        except UnicodeDecodeError:
            raise SecretStoreError(f"{self.name}, version {version}: not UTF-8 text") from None
        except ConfigError as error:
            raise SecretStoreError(str(error)) from None

    def ensure(self) -> bool:
        """Create the secret if it is missing (automatic replication); True if created."""
        project, _, secret_id = self.name.removeprefix("projects/").partition("/secrets/")
        try:
            self._call(
                lambda client: client.create_secret(
                    parent=f"projects/{project}",
                    secret_id=secret_id,
                    secret=secretmanager.Secret(
                        replication=secretmanager.Replication(
                            automatic=secretmanager.Replication.Automatic()
                        )
                    ),
                    timeout=CALL_SECONDS,
                ),
                # REST answers 409 (ALREADY_EXISTS), which api-core raises as Conflict.
                expected=(api_exceptions.Conflict,),
            )
        except api_exceptions.Conflict:
            return False
        return True

    def check_can_write(self) -> None:
        answer = self._call(
            lambda client: client.test_iam_permissions(
                request={"resource": self.name, "permissions": list(WRITE_PERMISSIONS)},
                timeout=CALL_SECONDS,
            )
        )
        missing = sorted(set(WRITE_PERMISSIONS) - set(answer.permissions))
        if missing:
            raise SecretStoreError(
                f"{self.name}: these credentials lack {', '.join(missing)} "
                "(grant roles/secretmanager.secretVersionAdder and secretAccessor)"
            )

    def add(self, entries: tuple[Secret, ...]) -> str:
        """Add a version holding `entries`; its number."""
        data = format_entries(entries).encode()
        answer = self._call(
            lambda client: client.add_secret_version(
                parent=self.name,
                payload=secretmanager.SecretPayload(data=data),
                timeout=CALL_SECONDS,
            )
        )
        return str(answer.name.rpartition("/")[2])

    def _retrying(self, call: Callable[[], T], on_retry: Callable[[str], None] | None) -> T:
        """`call`, again after a transient failure, with backoff, for about a minute."""
        give_up = self._clock() + self._retry_seconds
        backoff = FIRST_BACKOFF
        while True:
            try:
                return call()
            except TransientError as error:
                pause = min(backoff, give_up - self._clock())
                if pause <= 0:
                    raise SecretStoreError(str(error)) from None
                if on_retry is not None:
                    on_retry(f"{error}; retrying in {pause:.1f} s")
                self._sleep(pause)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _call(self, call: Callable[[Client], T], expected: tuple[type[Exception], ...] = ()) -> T:
        try:
            if self._client is None:
                self._client = Client(transport="rest")
            return call(self._client)
        except expected:
            raise
        except TRANSIENT as error:
            raise TransientError(_describe(error)) from None
        except api_exceptions.GoogleAPICallError as error:
            raise SecretStoreError(f"Secret Manager answered {google_error(error)}") from None
        except api_exceptions.RetryError:
            raise SecretStoreError("Secret Manager did not answer in time") from None
        except google.auth.exceptions.DefaultCredentialsError:
            raise SecretStoreError(
                "no Google credentials: run `gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS"
            ) from None
        except google.auth.exceptions.GoogleAuthError as error:
            raise SecretStoreError(
                f"Google credentials were refused ({type(error).__name__})"
            ) from None
        except requests.RequestException as error:
            raise SecretStoreError(
                f"Secret Manager could not be reached ({type(error).__name__})"
            ) from None


def _describe(error: Exception) -> str:
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return f"Secret Manager answered {google_error(error)}"
    if isinstance(error, api_exceptions.RetryError):
        return "Secret Manager did not answer in time"
    return f"Secret Manager could not be reached ({type(error).__name__})"


def google_error(error: api_exceptions.GoogleAPICallError) -> str:
    """`HTTP 503 UNAVAILABLE: <Google's message>`; never a request (it may hold a payload)."""
    status = getattr(error.grpc_status_code, "name", None)
    message = str(error.message or "")
    try:
        detail = error.response.json()["error"]
        status, message = detail.get("status") or status, detail.get("message") or message
    except Exception:  # noqa: S110 (no JSON body: the exception's own text is used)
        pass
    # api-core prefixes REST errors with the method and URL: noise on one line.
    message = re.sub(r"^[A-Z]+ https?://\S+: ", "", " ".join(message.split()))[:300]
    return f"HTTP {error.code}" + (f" {status}" if status else "") + f": {message}"
