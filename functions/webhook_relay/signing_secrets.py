"""The relay's `v1` signing secrets: their format, their expiry, and the file that rotates them.

Format: entries separated by commas or white space, each `whsec_<base64>` (the prefix is
optional), optionally followed by attributes `;name=value`: `webhook=<id>` (the webhook the
secret belongs to, written by `register` and `rotate`) and `expires=<RFC 3339 time>`. Other
attributes are kept and ignored, so a newer command line never stops an older relay from
starting; a malformed one (no `=`, a bad name, a repeated `webhook` or `expires`) is refused.
`;` is not in the base64 alphabet and attributes hold no comma or white space, so an attribute
can never be read as (or split off) a secret. A secret is accepted until its expiry; `rotate`
writes the previous secret with the time Gemini stops using it, so a rotation needs no second
step.

Nothing here logs or raises a secret's value: a secret is named by its position in the list
or by `fingerprint` (the first 8 hex digits of its key's SHA-256).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
EXPIRES = "expires"
WEBHOOK = "webhook"
FILE_VARIABLE = "WEBHOOK_SIGNING_SECRETS_FILE"
# Within this long after a change, a rotated secrets file is in use (the contract allows 10 s).
SECRETS_FILE_CHECK_SECONDS = 1.0
# A secrets file is a handful of lines; anything larger is not one (and is not read whole).
MAX_FILE_BYTES = 64 * 1024
_SEPARATORS = re.compile(r"[\s,]+")
_ATTRIBUTE = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<value>.*)", re.DOTALL)


@dataclass(frozen=True, repr=False)
class Secret:
    """One entry: `text` as written (never log it), its key, and when it stops being accepted."""

    text: str
    key: bytes
    expires_at: datetime | None = None
    webhook: str | None = None  # a name, not a secret
    extra: tuple[str, ...] = ()  # attributes this version does not know, written back as read

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.key).hexdigest()[:8]

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at.timestamp()

    def expiring(self, at: datetime | None) -> Secret:
        return replace(self, expires_at=at)

    def tagged(self, webhook: str | None) -> Secret:
        return replace(self, webhook=webhook)

    def entry(self) -> str:
        """The entry as the secrets format writes it."""
        parts = [self.text]
        if self.webhook is not None:
            parts.append(f"{WEBHOOK}={self.webhook}")
        parts += self.extra
        if self.expires_at is not None:
            parts.append(f"{EXPIRES}={rfc3339(self.expires_at)}")
        return ";".join(parts)

    def __repr__(self) -> str:
        return f"Secret({self.fingerprint}, webhook={self.webhook}, expires_at={self.expires_at})"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_entries(raw: str, variable: str) -> tuple[Secret, ...]:
    tokens = [token for token in _SEPARATORS.split(raw) if token]
    return tuple(
        _parse_entry(token, variable, f"entry {position}")
        for position, token in enumerate(tokens, start=1)
    )


def parse_secrets(raw: str, variable: str) -> tuple[bytes, ...]:
    """The keys of every entry (expired ones included): the format's syntax check."""
    return tuple(entry.key for entry in parse_entries(raw, variable))


def format_entries(entries: Iterable[Secret]) -> str:
    return "".join(entry.entry() + "\n" for entry in entries)


def _parse_entry(token: str, variable: str, where: str) -> Secret:
    text, *attributes = token.split(";")
    encoded = text.removeprefix("whsec_")
    # Standard Webhooks libraries (standardwebhooks, svix) accept secrets without base64
    # padding; refusing them would fail a deployment on a secret every sender can use.
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        # Never echo the value: it is a secret.
        raise ConfigError(variable, f"{where} is not whsec_ followed by base64")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(variable, f"{where} is shorter than {MIN_KEY_BYTES} bytes")
    expires_at: datetime | None = None
    webhook: str | None = None
    extra: list[str] = []
    seen: set[str] = set()
    for attribute in attributes:
        match = _ATTRIBUTE.fullmatch(attribute)
        if match is None:
            raise ConfigError(variable, f"{where}: after ';' each attribute is name=value")
        name, value = match["name"], match["value"]
        if name in seen and name in (EXPIRES, WEBHOOK):
            raise ConfigError(variable, f"{where}: '{name}=' may appear only once")
        seen.add(name)
        if name == EXPIRES:
            expires_at = _parse_time(value, variable, where)
        elif name == WEBHOOK:
            if not value:
                raise ConfigError(variable, f"{where}: {WEBHOOK}= needs the webhook's id")
            webhook = value
        else:
            extra.append(attribute)  # forward compatible: a later version's attribute
    return Secret(text, key, expires_at, webhook, tuple(extra))


def _parse_time(value: str, variable: str, where: str) -> datetime:
    problem = f"{where}: {EXPIRES}= needs an RFC 3339 time with a zone, e.g. 2026-11-26T10:00:00Z"
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d)", value, re.IGNORECASE):
        raise ConfigError(variable, problem)
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(variable, problem) from None


class SigningSecrets:
    """Static secrets plus a file that a Secret Manager volume rewrites on rotation.

    The file is read once at start-up (a broken one fails the start), then by a background
    thread every `check_every` seconds, compared by content: a Secret Manager volume may
    present a new version with the same mtime, size and inode. Requests only read the current
    snapshot, never the file, so a read that stalls (a hung volume) delays the next rotation,
    never a delivery. A file that turns unreadable or unparseable keeps the previous secrets
    (one ERROR line per broken content), so a bad rotation degrades to the old secrets instead
    of refusing every delivery. `clock` is wall time (expiries are instants), injectable for
    tests; `refresh()` is one check, as the thread makes it.
    """

    def __init__(
        self,
        static: Iterable[Secret | bytes],
        path: Path | None,
        check_every: float = SECRETS_FILE_CHECK_SECONDS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._static = tuple(s if isinstance(s, Secret) else Secret("", s) for s in static)
        self._path = path
        self._check_every = check_every
        self._clock = clock or _wall_clock
        # Guards the snapshot only: never held during file I/O.
        self._lock = threading.Lock()
        self._content: bytes | None = None
        self._from_file: tuple[Secret, ...] = ()
        self._bad_content: bytes | None = None
        self._announced: set[tuple[bytes, datetime | None]] = set()
        self._live: tuple[bytes, ...] = ()
        self._next_expiry = float("inf")
        self._refresher: threading.Thread | None = None
        self._refresher_pid = 0
        self._stopped = threading.Event()
        self.last_error: str | None = None
        if path is not None:
            self._read_file(path, strict=True)
        self._refresh(self._clock())

    def current(self) -> tuple[bytes, ...]:
        """The keys accepted now: the snapshot, never a file read."""
        if self._path is not None and self._refresher_pid != os.getpid():
            self._start_refresher()
        now = self._clock()
        if now >= self._next_expiry:
            with self._lock:
                if now >= self._next_expiry:
                    self._refresh(now)
        return self._live

    def entries(self) -> tuple[Secret, ...]:
        """Every configured entry, expired ones included (for `status`)."""
        return self._static + self._from_file

    def refresh(self) -> None:
        """Read the file once and install what changed: the refresher's step (and tests')."""
        if self._path is not None:
            self._read_file(self._path, strict=False)

    def close(self) -> None:
        """Stop the refresher after its current step (a stalled read keeps its thread)."""
        self._stopped.set()

    def _start_refresher(self) -> None:
        with self._lock:
            # A forked worker inherits the object but not the thread: start its own.
            if self._refresher_pid == os.getpid():
                return
            self._refresher_pid = os.getpid()
            self._refresher = threading.Thread(
                target=self._run, name="signing-secrets-refresher", daemon=True
            )
            self._refresher.start()

    def _run(self) -> None:
        # A floor, so that check_every=0 cannot turn the thread into a busy loop.
        while not self._stopped.wait(max(self._check_every, 0.05)):
            try:
                self.refresh()
            except Exception:  # the thread must outlive any surprise, or rotations stop
                log.exception("re-reading %s failed", FILE_VARIABLE)

    def _read_file(self, path: Path, strict: bool) -> None:
        content: bytes | None = None
        try:
            with path.open("rb") as file:
                content = file.read(MAX_FILE_BYTES + 1)
            if content != self._content:
                if len(content) > MAX_FILE_BYTES:
                    raise ConfigError(FILE_VARIABLE, f"larger than {MAX_FILE_BYTES} bytes")
                entries = parse_entries(content.decode("utf-8"), FILE_VARIABLE)
                with self._lock:
                    self._from_file, self._content = entries, content
                    self._refresh(self._clock())
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            error = exc if isinstance(exc, ConfigError) else ConfigError(FILE_VARIABLE, _why(exc))
            if strict:
                raise error from None
            # One line per broken state: the same broken content (or the same read error) is
            # not logged again every check.
            broken = content if content is not None else str(error).encode()
            if broken != self._bad_content:
                log.error(
                    "keeping the previous signing secrets: %s",
                    error,
                    extra={"status": "signing_secrets_unusable"},
                )
            self._bad_content, self.last_error = broken, str(error)
            return
        self._bad_content = self.last_error = None

    def _refresh(self, now: float) -> None:
        live, next_expiry = [], float("inf")
        for entry in self.entries():
            if entry.expires_at is None or entry.live(now):
                live.append(entry.key)
                if entry.expires_at is not None:
                    next_expiry = min(next_expiry, entry.expires_at.timestamp())
                continue
            mark = (entry.key, entry.expires_at)
            if mark not in self._announced:
                self._announced.add(mark)
                log.info(
                    "signing secret %s expired at %s: no longer accepted",
                    entry.fingerprint,
                    rfc3339(entry.expires_at),
                    extra={"status": "signing_secret_expired", "fingerprint": entry.fingerprint},
                )
        self._live, self._next_expiry = tuple(live), next_expiry


def _wall_clock() -> float:
    return time.time()  # looked up per call, so tests may replace the module's `time`


def _why(exc: OSError | UnicodeDecodeError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"cannot read the file ({exc.strerror or type(exc).__name__})"
