"""The relay's signing-secret secret in Secret Manager: read the latest version, add one.

Versions are only ever added, never disabled or destroyed: the history is the operator's
rollback. Errors are `SecretStoreError`, one line without any secret; what Google said (its
status and message) is kept, since an error answer never holds the payload.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
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


class SecretStoreError(Exception):
    pass


@dataclass(frozen=True)
class Latest:
    version: str  # the version number
    entries: tuple[Secret, ...]


def resource_name(project: str, secret: str) -> str:
    if secret.startswith("projects/"):
        if not re.fullmatch(r"projects/[^/]+/secrets/[A-Za-z0-9_-]{1,255}", secret):
            raise SecretStoreError(f"--secret {secret}: not projects/PROJECT/secrets/NAME")
        return secret
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret):
        raise SecretStoreError(f"--secret {secret}: a secret id is letters, digits, - and _")
    return f"projects/{project}/secrets/{secret}"


class SecretStore:
    def __init__(self, name: str) -> None:
        self.name = name
        self._client: Client | None = None

    def read_latest(self) -> Latest | None:
        """The latest version's entries; None when the secret or any version is missing."""
        try:
            answer = self._call(
                lambda client: client.access_secret_version(
                    name=f"{self.name}/versions/latest",
                    retry=Retry(timeout=CALL_SECONDS),
                    timeout=CALL_SECONDS,
                ),
                expected=(api_exceptions.NotFound,),
            )
        except api_exceptions.NotFound:
            return None
        version = answer.name.rpartition("/")[2]
        try:
            text = bytes(answer.payload.data).decode("utf-8")
            entries = parse_entries(text, f"{self.name}, version {version}")
        except UnicodeDecodeError:
            raise SecretStoreError(f"{self.name}, version {version}: not UTF-8 text") from None
        except ConfigError as error:
            raise SecretStoreError(str(error)) from None
        return Latest(version, entries)

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

    def _call(self, call: Callable[[Client], T], expected: tuple[type[Exception], ...] = ()) -> T:
        try:
            if self._client is None:
                self._client = Client(transport="rest")
            return call(self._client)
        except expected:
            raise
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
