"""The secrets format with expiries, and a secrets file re-read by content."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from werkzeug.datastructures import Headers

from tests.support.fakes import FakeClock
from tests.support.signing import headers_v1, new_secret
from webhook_relay.config import load_settings
from webhook_relay.errors import ConfigError
from webhook_relay.signing_secrets import (
    MAX_FILE_BYTES,
    SigningSecrets,
    format_entries,
    parse_entries,
    rfc3339,
)
from webhook_relay.verify import Verifier, read_delivery

SECRET, OTHER = new_secret(), new_secret()
KEY, OTHER_KEY = (base64.b64decode(s.removeprefix("whsec_")) for s in (SECRET, OTHER))
NOW = 1_800_000_000.0  # 2027-01-15: a wall clock, since expiries are instants
LATER = datetime.fromtimestamp(NOW + 60, UTC)
BODY = b'{"type": "batch.succeeded", "data": {"id": "batches/b1"}}'


def at(moment: datetime) -> str:
    return f";expires={rfc3339(moment)}"


def config_error(raw: str, variable: str = "V") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_entries(raw, variable)
    return caught.value


def secrets_file(tmp_path: Path, text: str) -> tuple[Path, FakeClock, SigningSecrets]:
    path = tmp_path / "secrets"
    path.write_text(text)
    clock = FakeClock(NOW)
    # The refresher never fires on its own here: each test runs its step with refresh().
    return path, clock, SigningSecrets((), path, check_every=3600, clock=clock)


# --- the format --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        f"{SECRET},{OTHER}",
        f"{SECRET}\n{OTHER}\n",
        f"{SECRET.removeprefix('whsec_')} {OTHER.rstrip('=')}",
        f"{SECRET}{at(LATER)}, {OTHER}",
    ],
)
def test_every_earlier_format_still_reads_and_an_expiry_is_optional(raw: str) -> None:
    assert [e.key for e in parse_entries(raw, "V")] == [KEY, OTHER_KEY]


@pytest.mark.parametrize(
    "suffix", [";expires=2027-01-15T08:01:00Z", ";expires=2027-01-15T09:01:00.25+01:00"]
)
def test_expiry_is_an_rfc3339_instant(suffix: str) -> None:
    (entry,) = parse_entries(SECRET + suffix, "V")
    assert entry.expires_at is not None
    assert entry.expires_at.timestamp() in (NOW + 60, NOW + 60.25)


@pytest.mark.parametrize(
    "suffix",
    [
        ";expires=2027-01-15T08:01:00",  # no zone: ambiguous
        ";expires=tomorrow",
        ";expires=2027-13-15T08:01:00Z",
        ";expires=",
        ";expires=2027-01-15T08:01:00Z;expires=2027-01-15T08:01:00Z",
        ";",
        ";webhook",
        ";webhook=",
        ";webhook=wh_1;webhook=wh_2",
        ";=value",
        ";9lives=x",
    ],
)
def test_bad_expiry_names_the_variable_and_entry_and_not_the_secret(suffix: str) -> None:
    error = config_error(f"{OTHER} {SECRET}{suffix}", "WEBHOOK_SIGNING_SECRETS")
    assert error.variable == "WEBHOOK_SIGNING_SECRETS"
    assert "entry 2" in str(error)
    assert SECRET.removeprefix("whsec_")[:8] not in str(error)


def test_webhook_tag_is_read_and_written_back() -> None:
    (entry,) = parse_entries(f"{SECRET};webhook=webhooks/wh_1{at(LATER)}", "V")
    assert (entry.key, entry.webhook, entry.expires_at) == (KEY, "webhooks/wh_1", LATER)
    assert entry.entry() == f"{SECRET};webhook=webhooks/wh_1{at(LATER)}"
    assert SECRET not in repr(entry)


@pytest.mark.parametrize(
    "suffix", [";colour=blue", ";expire=2027-01-15T08:01:00Z", ";note=", ";v2.flag=on;x-y=1"]
)
def test_unknown_attributes_are_ignored_and_kept(suffix: str) -> None:
    # Forward compatible: a newer command line's attribute never stops this relay from starting.
    (entry,) = parse_entries(f"{SECRET};webhook=wh_1{suffix}{at(LATER)}", "V")
    assert (entry.key, entry.webhook, entry.expires_at) == (KEY, "wh_1", LATER)
    assert entry.entry() == f"{SECRET};webhook=wh_1{suffix}{at(LATER)}"


def test_tagged_file_written_by_the_commands_is_read_by_the_relay(tmp_path: Path) -> None:
    path, _, secrets = secrets_file(tmp_path, f"{SECRET};webhook=wh_1{at(LATER)}\n")
    assert secrets.current() == (KEY,)
    path.write_text(f"{OTHER};webhook=wh_2;future=1\n{SECRET};webhook=wh_1{at(LATER)}\n")
    secrets.refresh()
    assert secrets.current() == (OTHER_KEY, KEY)
    assert secrets.last_error is None


def test_secret_shorter_than_16_bytes_is_refused_at_start_up() -> None:
    short = "whsec_" + base64.b64encode(b"fifteen bytes!!").decode()
    with pytest.raises(ConfigError) as caught:
        load_settings({"WEBHOOK_SIGNING_SECRETS": f"{SECRET} {short}"})
    assert caught.value.variable == "WEBHOOK_SIGNING_SECRETS"
    assert "entry 2 is shorter than 16 bytes" in str(caught.value)
    assert short.removeprefix("whsec_") not in str(caught.value)


def test_short_secret_in_the_file_is_refused_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("whsec_" + base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError) as caught:
        load_settings({"WEBHOOK_SIGNING_SECRETS_FILE": str(path)})
    assert caught.value.variable == "WEBHOOK_SIGNING_SECRETS_FILE"


def test_written_entries_read_back_the_same() -> None:
    entries = parse_entries(f"{SECRET}{at(LATER)} {OTHER}", "V")
    again = parse_entries(format_entries(entries), "V")
    assert [(e.key, e.expires_at) for e in again] == [(KEY, LATER), (OTHER_KEY, None)]


def test_an_entry_never_shows_its_secret() -> None:
    (entry,) = parse_entries(SECRET, "V")
    assert SECRET not in repr(entry)
    assert SECRET not in str(entry)
    assert entry.fingerprint in repr(entry)


# --- expiry ------------------------------------------------------------------------------------


def test_secret_is_accepted_until_its_expiry_then_refused_with_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(NOW)
    (expiring, staying) = parse_entries(f"{SECRET}{at(LATER)} {OTHER}", "V")
    secrets = SigningSecrets((expiring, staying), None, clock=clock)
    assert secrets.current() == (KEY, OTHER_KEY)
    clock.advance(59.9)
    assert secrets.current() == (KEY, OTHER_KEY)
    caplog.set_level(logging.INFO)
    clock.advance(0.1)
    for _ in range(3):
        assert secrets.current() == (OTHER_KEY,)
        clock.advance(5)
    lines = [r for r in caplog.records if "expired" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert expiring.fingerprint in lines[0].getMessage()
    assert SECRET.removeprefix("whsec_")[:8] not in caplog.text


def test_secret_already_expired_at_start_up_is_not_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    past = datetime.fromtimestamp(NOW - 1, UTC)
    entries = parse_entries(f"{SECRET}{at(past)} {OTHER}", "V")
    secrets = SigningSecrets(entries, None, clock=FakeClock(NOW))
    assert secrets.current() == (OTHER_KEY,)
    assert len([r for r in caplog.records if "expired" in r.getMessage()]) == 1


def test_expiry_in_the_secrets_file_applies(tmp_path: Path) -> None:
    _, clock, secrets = secrets_file(tmp_path, f"{SECRET}{at(LATER)}\n{OTHER}\n")
    assert secrets.current() == (KEY, OTHER_KEY)
    clock.advance(61)
    assert secrets.current() == (OTHER_KEY,)


# --- the file ----------------------------------------------------------------------------------


def test_new_version_with_same_mtime_size_and_inode_is_seen(tmp_path: Path) -> None:
    # What a Secret Manager volume may do: same length, same inode, mtime put back.
    path, _, secrets = secrets_file(tmp_path, SECRET)
    before = path.stat()
    replacement = OTHER[: len(SECRET)].ljust(len(SECRET), "A")
    with path.open("r+") as file:
        file.write(replacement)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_ino,
    )
    secrets.refresh()
    assert secrets.current() == (parse_entries(replacement, "V")[0].key,)


def test_a_request_never_reads_the_file_the_refresher_does(tmp_path: Path) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.write_text(OTHER)
    clock.advance(3600)
    assert secrets.current() == (KEY,)  # the snapshot: no read on the request path
    secrets.refresh()
    assert secrets.current() == (OTHER_KEY,)


def test_broken_new_file_keeps_previous_secrets_and_logs_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _, secrets = secrets_file(tmp_path, SECRET)
    path.write_text(f"{OTHER} whsec_half*written")
    for _ in range(5):
        secrets.refresh()
        assert secrets.current() == (KEY,)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "WEBHOOK_SIGNING_SECRETS_FILE" in errors[0].getMessage()
    assert "half" not in caplog.text
    assert OTHER not in caplog.text
    assert secrets.last_error is not None


def test_another_broken_version_is_logged_again_and_a_good_one_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _, secrets = secrets_file(tmp_path, SECRET)
    for text in ("whsec_!!", "whsec_??"):
        path.write_text(text)
        secrets.refresh()
        assert secrets.current() == (KEY,)
    path.write_text(OTHER)
    secrets.refresh()
    assert secrets.current() == (OTHER_KEY,)
    assert secrets.last_error is None
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_short_secret_in_a_new_version_keeps_the_previous_secrets(tmp_path: Path) -> None:
    path, _, secrets = secrets_file(tmp_path, SECRET)
    path.write_text("whsec_" + base64.b64encode(b"short").decode())
    secrets.refresh()
    assert secrets.current() == (KEY,)
    assert secrets.last_error is not None
    assert "shorter than 16 bytes" in secrets.last_error


def test_deleted_file_keeps_previous_secrets_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _, secrets = secrets_file(tmp_path, SECRET)
    path.unlink()
    for _ in range(3):
        secrets.refresh()
        assert secrets.current() == (KEY,)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_oversized_file_is_not_read_whole_and_keeps_previous_secrets(tmp_path: Path) -> None:
    path, _, secrets = secrets_file(tmp_path, SECRET)
    path.write_text((OTHER + "\n") * (MAX_FILE_BYTES // len(OTHER) + 1))
    secrets.refresh()
    assert secrets.current() == (KEY,)
    assert secrets.last_error is not None
    assert "larger than" in secrets.last_error


def test_not_utf8_file_keeps_previous_secrets(tmp_path: Path) -> None:
    path, _, secrets = secrets_file(tmp_path, SECRET)
    path.write_bytes(b"\xff\xfe" + OTHER.encode())
    secrets.refresh()
    assert secrets.current() == (KEY,)
    assert secrets.last_error is not None
    assert "UTF-8" in secrets.last_error


def test_expiry_from_the_environment_variable_applies() -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS": f"{SECRET}{at(past)} {OTHER}"})
    assert settings.secrets.current() == (OTHER_KEY,)


# --- the refresher -----------------------------------------------------------------------------


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10  # the contract's bound for a rotation to be seen
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_refresher_thread_picks_up_a_new_version(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(SECRET)
    secrets = SigningSecrets((), path, check_every=0.05)
    try:
        assert secrets.current() == (KEY,)  # starts the refresher
        path.write_text(f"{SECRET}\n{OTHER}\n")
        eventually(lambda: secrets.current() == (KEY, OTHER_KEY), "new version not seen")
    finally:
        secrets.close()


def test_a_stalled_read_never_stalls_a_verification(tmp_path: Path) -> None:
    """A hung secret volume: the refresher's read of a FIFO blocks until its writer writes."""
    path = tmp_path / "secrets"
    path.write_text(SECRET)
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS_FILE": str(path), "GEMINI_JWKS_URL": ""})
    secrets = settings.secrets
    verifier = Verifier(settings, None)
    path.unlink()
    os.mkfifo(path)
    writer: list[int] = []

    def refresher_is_reading() -> bool:
        # Opening a FIFO for writing without blocking succeeds only once a reader has it open;
        # the writer is kept open, so the reader's read() waits for data.
        with contextlib.suppress(OSError):
            writer.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        return bool(writer)

    try:
        assert secrets.current() == (KEY,)  # starts the refresher
        eventually(refresher_is_reading, "the refresher never opened the file")
        answers: list[str] = []

        def verify() -> None:
            delivery = read_delivery(Headers(headers_v1(SECRET, BODY)), BODY)
            answers.append(verifier.verify(delivery))

        worker = threading.Thread(target=verify, daemon=True)
        worker.start()
        worker.join(timeout=5)  # not a speed figure: a request blocked on the file never returns
        assert answers == ["hmac"]
        os.write(writer[0], f"{OTHER}\n".encode())
        os.close(writer.pop())
        eventually(lambda: secrets.current() == (OTHER_KEY,), "the read never completed")
    finally:
        secrets.close()
        for fd in writer:
            os.close(fd)
