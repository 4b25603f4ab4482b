"""Start-up configuration: each bad variable is one ConfigError naming it, not a request error."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest

from tests.support.signing import Ed25519Signer, new_secret
from webhook_relay import config, signing_secrets
from webhook_relay.config import DEFAULT_JWKS_URL, load_settings
from webhook_relay.errors import ConfigError
from webhook_relay.signing_secrets import SigningSecrets, parse_secrets

SECRET = new_secret()
KEY_BYTES = base64.b64decode(SECRET.removeprefix("whsec_"))


def settings_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET} | env)
    return caught.value


def touch_later(path: Path) -> None:
    """A new modification time, as a Secret Manager volume update gives the file."""
    later = time.time_ns() + 5_000_000_000
    os.utime(path, ns=(later, later))


# --- secrets -------------------------------------------------------------------------------


def test_unparseable_secret_names_the_variable_and_not_the_secret() -> None:
    secret = "whsec_this*is*not*base64*but*is*secret"
    error = settings_error({"WEBHOOK_SIGNING_SECRETS": f"{SECRET} {secret}"})
    assert error.variable == "WEBHOOK_SIGNING_SECRETS"
    assert "this*is*not" not in str(error)
    assert "entry 2" in str(error)


def test_empty_whsec_is_unparseable() -> None:
    assert settings_error({"WEBHOOK_SIGNING_SECRETS": "whsec_"}).variable == (
        "WEBHOOK_SIGNING_SECRETS"
    )


def test_singular_webhook_signing_secret_is_read() -> None:
    settings = load_settings({"WEBHOOK_SIGNING_SECRET": SECRET})
    assert settings.secrets.current() == (KEY_BYTES,)


def test_bad_singular_secret_names_the_singular_variable() -> None:
    error = settings_error({"WEBHOOK_SIGNING_SECRET": "whsec_!!"})
    assert error.variable == "WEBHOOK_SIGNING_SECRET"


@pytest.mark.parametrize("separator", [",", " ", "\n", " ,\t", ", "])
def test_secrets_separated_by_commas_or_white_space(separator: str) -> None:
    other = new_secret()
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS": f"{SECRET}{separator}{other}"})
    assert len(settings.secrets.current()) == 2


def test_secret_without_whsec_prefix_is_read() -> None:
    assert parse_secrets(SECRET.removeprefix("whsec_"), "V") == (KEY_BYTES,)


def test_missing_secrets_file_names_the_variable(tmp_path: Path) -> None:
    error = settings_error({"WEBHOOK_SIGNING_SECRETS_FILE": str(tmp_path / "absent")})
    assert error.variable == "WEBHOOK_SIGNING_SECRETS_FILE"


def test_unparseable_secrets_file_names_the_variable_and_not_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text("whsec_secret*value")
    error = settings_error({"WEBHOOK_SIGNING_SECRETS_FILE": str(path)})
    assert error.variable == "WEBHOOK_SIGNING_SECRETS_FILE"
    assert "secret*value" not in str(error)


def test_secrets_file_is_read_again_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(SECRET)
    secrets = SigningSecrets((), path, check_every=0)
    rotated = new_secret()
    path.write_text(f"{SECRET}\n{rotated}\n")
    touch_later(path)
    secrets.refresh()  # what the refresher thread does every second
    assert secrets.current() == parse_secrets(f"{SECRET} {rotated}", "V")


def test_secrets_file_change_is_seen_within_the_check_interval(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(SECRET)
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS_FILE": str(path)})
    rotated = new_secret()
    path.write_text(rotated)
    touch_later(path)
    settings.secrets.refresh()  # one check of the refresher thread
    assert signing_secrets.SECRETS_FILE_CHECK_SECONDS <= 10  # the contract's bound
    assert settings.secrets.current() == parse_secrets(rotated, "V")


def test_broken_rewrite_of_secrets_file_keeps_the_old_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(SECRET)
    secrets = SigningSecrets((), path, check_every=0)
    path.write_text("whsec_half-written*")
    touch_later(path)
    secrets.refresh()
    assert secrets.current() == (KEY_BYTES,)
    assert secrets.last_error is not None
    assert "WEBHOOK_SIGNING_SECRETS_FILE" in secrets.last_error


def test_deleted_secrets_file_keeps_the_old_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(SECRET)
    secrets = SigningSecrets((), path, check_every=0)
    path.unlink()
    assert secrets.current() == (KEY_BYTES,)


def test_static_and_file_secrets_are_both_used(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    other = new_secret()
    path.write_text(other)
    settings = load_settings(
        {"WEBHOOK_SIGNING_SECRETS": SECRET, "WEBHOOK_SIGNING_SECRETS_FILE": str(path)}
    )
    assert settings.secrets.current() == parse_secrets(f"{SECRET} {other}", "V")


# --- public keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("whpk_not*base64", id="not-base64"),
        pytest.param("whpk_" + base64.b64encode(b"k" * 31).decode(), id="31-bytes"),
    ],
)
def test_bad_public_key_names_the_variable(key: str) -> None:
    assert settings_error({"WEBHOOK_PUBLIC_KEYS": key}).variable == "WEBHOOK_PUBLIC_KEYS"


def test_public_keys_alone_are_a_verification_method() -> None:
    settings = load_settings({"WEBHOOK_PUBLIC_KEYS": Ed25519Signer().public_key})
    assert len(settings.public_keys) == 1


# --- key set URL and audience --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://keys.example/jwks.json",
        "http://localhost.evil.example/jwks.json",
        "http://localhost@evil.example/jwks.json",
        "http://10.0.0.1/jwks.json",
        "ftp://keys.example/jwks.json",
        "https:///jwks.json",
        "jwks.json",
    ],
)
def test_jwks_url_must_be_https(url: str) -> None:
    assert settings_error({"GEMINI_JWKS_URL": url}).variable == "GEMINI_JWKS_URL"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/jwks.json", "http://localhost/jwks.json", "http://[::1]:9/jwks"],
)
def test_jwks_url_may_be_http_on_loopback(url: str) -> None:
    assert (
        load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET, "GEMINI_JWKS_URL": url}).jwks_url == url
    )


def test_jwks_url_defaults_to_google() -> None:
    assert load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET}).jwks_url == DEFAULT_JWKS_URL


def test_empty_jwks_url_disables_jwt() -> None:
    assert (
        load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET, "GEMINI_JWKS_URL": ""}).jwks_url is None
    )


def test_star_audience_warns_at_start_up() -> None:
    settings = load_settings({"GEMINI_JWT_AUDIENCE": "*"})
    assert settings.any_audience
    assert any("GEMINI_JWT_AUDIENCE is '*'" in warning for warning in settings.warnings)


def test_missing_audience_warns_at_start_up() -> None:
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET})
    assert any("GEMINI_JWT_AUDIENCE is unset" in warning for warning in settings.warnings)


def test_audience_and_issuers_are_comma_separated() -> None:
    settings = load_settings(
        {
            "GEMINI_JWT_AUDIENCE": " https://a.example ,https://b.example,",
            "GEMINI_JWT_ISSUERS": "x, y",
        }
    )
    assert settings.jwt_audiences == ("https://a.example", "https://b.example")
    assert settings.jwt_issuers == ("x", "y")
    assert settings.warnings == ()


# --- no verification method ----------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"GEMINI_JWKS_URL": ""}, id="jwks-disabled"),
        pytest.param({"GEMINI_JWT_AUDIENCE": "x", "GEMINI_JWKS_URL": ""}, id="audience-no-jwks"),
        pytest.param({"WEBHOOK_SIGNING_SECRETS": " , "}, id="separators-only"),
    ],
)
def test_no_verification_method_fails_at_start_up(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert "no verification method" in str(caught.value)


def test_jwt_audience_alone_is_a_verification_method() -> None:
    assert load_settings({"GEMINI_JWT_AUDIENCE": "https://relay.example"}).jwt_audiences


# --- dynamic (per-request) v1a deliveries --------------------------------------------------


def test_dynamic_webhooks_are_off_by_default() -> None:
    assert load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET}).dynamic_webhooks is False


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), (" TRUE ", True), ("false", False)]
)
def test_dynamic_webhooks_flag_is_read(value: str, expected: bool) -> None:
    env = {"WEBHOOK_SIGNING_SECRETS": SECRET, "GEMINI_DYNAMIC_WEBHOOKS": value}
    assert load_settings(env).dynamic_webhooks is expected


@pytest.mark.parametrize("value", ["yes", "1", "on", "tru"])
def test_dynamic_webhooks_flag_is_parsed_strictly(value: str) -> None:
    error = settings_error({"GEMINI_DYNAMIC_WEBHOOKS": value})
    assert error.variable == "GEMINI_DYNAMIC_WEBHOOKS"
    assert "true or false" in str(error)


def test_dynamic_webhooks_alone_are_a_verification_method() -> None:
    settings = load_settings({"GEMINI_DYNAMIC_WEBHOOKS": "true"})
    assert settings.dynamic_webhooks
    assert settings.jwks_url == DEFAULT_JWKS_URL


def test_dynamic_webhooks_without_a_key_set_fail_at_start_up() -> None:
    error = settings_error({"GEMINI_DYNAMIC_WEBHOOKS": "true", "GEMINI_JWKS_URL": ""})
    assert error.variable == "GEMINI_DYNAMIC_WEBHOOKS"
    assert "GEMINI_JWKS_URL" in str(error)


def test_dynamic_webhooks_is_a_variable_infra_may_set() -> None:
    assert "GEMINI_DYNAMIC_WEBHOOKS" in config.ENVIRONMENT


# --- routes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "routes",
    [
        pytest.param("{not json", id="invalid-json"),
        pytest.param('["batch.*"]', id="not-an-object"),
        pytest.param("{}", id="empty-object"),
        pytest.param('{"batch*": "gemini-batch"}', id="bad-pattern"),
        pytest.param('{"batch..x": "gemini-batch"}', id="empty-segment"),
        pytest.param('{"*.succeeded": "gemini-batch"}', id="star-not-last"),
        pytest.param('{"batch.*": "go"}', id="topic-too-short"),
        pytest.param('{"batch.*": "1batch"}', id="topic-starts-with-digit"),
        pytest.param('{"batch.*": "goog-batch"}', id="topic-reserved"),
        pytest.param('{"batch.*": "has space"}', id="topic-bad-character"),
        pytest.param('{"batch.*": 5}', id="topic-not-a-string"),
    ],
)
def test_invalid_relay_routes_names_the_variable(routes: str) -> None:
    assert settings_error({"RELAY_ROUTES": routes}).variable == "RELAY_ROUTES"


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("-x", id="bad-first-character"),
        pytest.param("goog-", id="reserved"),
        pytest.param("p" * 250, id="topics-too-long"),
    ],
)
def test_bad_topic_prefix_names_the_variable(prefix: str) -> None:
    assert settings_error({"RELAY_TOPIC_PREFIX": prefix}).variable == "RELAY_TOPIC_PREFIX"


def test_bad_dedup_collection_names_the_variable() -> None:
    error = settings_error({"RELAY_DEDUP_COLLECTION": "a/b"})
    assert error.variable == "RELAY_DEDUP_COLLECTION"


# --- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable",
    [
        "WEBHOOK_TOLERANCE_SECONDS",
        "WEBHOOK_MAX_BODY_BYTES",
        "RELAY_DEDUP_TTL_HOURS",
        "RELAY_CLAIM_LEASE_SECONDS",
    ],
)
@pytest.mark.parametrize("value", ["abc", "1.5", "-1", "0", "1e3", "99999999999"])
def test_non_integer_or_out_of_range_number_names_the_variable(variable: str, value: str) -> None:
    assert settings_error({variable: value}).variable == variable


@pytest.mark.parametrize("hours", ["1", "24"])
def test_dedup_ttl_must_exceed_gemini_24_hours_of_retries(hours: str) -> None:
    assert settings_error({"RELAY_DEDUP_TTL_HOURS": hours}).variable == "RELAY_DEDUP_TTL_HOURS"


@pytest.mark.parametrize("seconds", ["1", "9", "14"])
def test_lease_shorter_than_a_request_can_hold_a_claim_is_refused(seconds: str) -> None:
    # A request holds its claim up to 9.5 s: a shorter lease lets a retry take over a claim
    # whose publish is still running, and publish the event again.
    error = settings_error({"RELAY_CLAIM_LEASE_SECONDS": seconds})
    assert error.variable == "RELAY_CLAIM_LEASE_SECONDS"


def test_lease_of_15_seconds_is_accepted() -> None:
    env = {"WEBHOOK_SIGNING_SECRETS": SECRET, "RELAY_CLAIM_LEASE_SECONDS": "15"}
    assert load_settings(env).claim_lease_seconds == 15


def test_gcp_project_is_read_and_listed() -> None:
    env = {"WEBHOOK_SIGNING_SECRETS": SECRET, "GCP_PROJECT": "legacy-name"}
    assert load_settings(env).project == "legacy-name"
    assert "GCP_PROJECT" in config.ENVIRONMENT


def test_dedup_ttl_of_25_hours_is_accepted() -> None:
    assert (
        load_settings(
            {"WEBHOOK_SIGNING_SECRETS": SECRET, "RELAY_DEDUP_TTL_HOURS": "25"}
        ).dedup_ttl_hours
        == 25
    )


def test_defaults() -> None:
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET})
    assert (
        settings.tolerance_seconds,
        settings.max_body_bytes,
        settings.topic_prefix,
        settings.dedup_collection,
        settings.dedup_ttl_hours,
        settings.claim_lease_seconds,
        settings.jwt_audiences,
        settings.jwt_issuers,
    ) == (300, 1_048_576, "gemini-", "webhook_deliveries", 72, 30, (), ())


def test_max_body_limit_above_what_a_quarantined_message_can_carry_is_refused() -> None:
    # A quarantined body travels base64-encoded (4/3 of its size) in one Pub/Sub message of
    # at most 10 MB: 8 MiB would become 11.2 MB, refused by Pub/Sub on every retry.
    error = settings_error({"WEBHOOK_MAX_BODY_BYTES": str(8 * 1_048_576)})
    assert error.variable == "WEBHOOK_MAX_BODY_BYTES"


def test_project_from_google_cloud_project() -> None:
    settings = load_settings({"WEBHOOK_SIGNING_SECRETS": SECRET, "GOOGLE_CLOUD_PROJECT": "p-1"})
    assert settings.project == "p-1"
