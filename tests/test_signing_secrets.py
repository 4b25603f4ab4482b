"""The secrets format with expiries, and a secrets file re-read by content."""

from __future__ import annotations

import base64
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.fakes import FakeClock
from tests.support.signing import new_secret
from webhook_relay.config import load_settings
from webhook_relay.errors import ConfigError
from webhook_relay.signing_secrets import (
    MAX_FILE_BYTES,
    SigningSecrets,
    format_entries,
    parse_entries,
    rfc3339,
)

SECRET, OTHER = new_secret(), new_secret()
KEY, OTHER_KEY = (base64.b64decode(s.removeprefix("whsec_")) for s in (SECRET, OTHER))
NOW = 1_800_000_000.0  # 2027-01-15: a wall clock, since expiries are instants
LATER = datetime.fromtimestamp(NOW + 60, UTC)


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
    return path, clock, SigningSecrets((), path, check_every=1.0, clock=clock)


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
        ";expire=2027-01-15T08:01:00Z",
        ";expires=2027-01-15T08:01:00Z;expires=2027-01-15T08:01:00Z",
        ";",
    ],
)
def test_bad_expiry_names_the_variable_and_entry_and_not_the_secret(suffix: str) -> None:
    error = config_error(f"{OTHER} {SECRET}{suffix}", "WEBHOOK_SIGNING_SECRETS")
    assert error.variable == "WEBHOOK_SIGNING_SECRETS"
    assert "entry 2" in str(error)
    assert SECRET.removeprefix("whsec_")[:8] not in str(error)


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
    path, clock, secrets = secrets_file(tmp_path, SECRET)
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
    clock.advance(1.0)
    assert secrets.current() == (parse_entries(replacement, "V")[0].key,)


def test_change_is_read_at_the_next_check_not_on_every_call(tmp_path: Path) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.write_text(OTHER)
    clock.advance(0.5)
    assert secrets.current() == (KEY,)  # within the interval: the last read stands
    clock.advance(0.5)
    assert secrets.current() == (OTHER_KEY,)


def test_clock_going_back_does_not_postpone_the_next_read(tmp_path: Path) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.write_text(OTHER)
    clock.advance(-3600)
    assert secrets.current() == (OTHER_KEY,)


def test_broken_new_file_keeps_previous_secrets_and_logs_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.write_text(f"{OTHER} whsec_half*written")
    for _ in range(5):
        clock.advance(1.0)
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
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    for text in ("whsec_!!", "whsec_??"):
        path.write_text(text)
        clock.advance(1.0)
        assert secrets.current() == (KEY,)
    path.write_text(OTHER)
    clock.advance(1.0)
    assert secrets.current() == (OTHER_KEY,)
    assert secrets.last_error is None
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2


def test_short_secret_in_a_new_version_keeps_the_previous_secrets(tmp_path: Path) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.write_text("whsec_" + base64.b64encode(b"short").decode())
    clock.advance(1.0)
    assert secrets.current() == (KEY,)
    assert secrets.last_error is not None
    assert "shorter than 16 bytes" in secrets.last_error


def test_deleted_file_keeps_previous_secrets_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.unlink()
    for _ in range(3):
        clock.advance(1.0)
        assert secrets.current() == (KEY,)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_oversized_file_is_not_read_whole_and_keeps_previous_secrets(tmp_path: Path) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.write_text((OTHER + "\n") * (MAX_FILE_BYTES // len(OTHER) + 1))
    clock.advance(1.0)
    assert secrets.current() == (KEY,)
    assert secrets.last_error is not None
    assert "larger than" in secrets.last_error


def test_not_utf8_file_keeps_previous_secrets(tmp_path: Path) -> None:
    path, clock, secrets = secrets_file(tmp_path, SECRET)
    path.write_bytes(b"\xff\xfe" + OTHER.encode())
    clock.advance(1.0)
    assert secrets.current() == (KEY,)
    assert secrets.last_error is not None
    assert "UTF-8" in secrets.last_error


def test_expiry_from_the_environment_variable_applies() -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS": f"{SECRET}{at(past)} {OTHER}"})
    assert settings.secrets.current() == (OTHER_KEY,)
