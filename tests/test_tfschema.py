"""infra/ against the providers' real schemas (google 6.x and 7.x), and the checker itself.

Each broken-copy test copies infra/ to a temporary directory, breaks one thing, and expects
exactly that problem and no other: so the checker both catches it and stays quiet on the rest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import tfschema

INFRA = Path(__file__).resolve().parent.parent / "infra"


@pytest.fixture(scope="module", params=sorted(tfschema.PROVIDER_SETS))
def schemas(request: pytest.FixtureRequest) -> tuple[tfschema.Schema, ...]:
    return tuple(tfschema.load(package) for package in tfschema.PROVIDER_SETS[request.param])


def test_infra_matches_the_provider_schema(schemas: tuple[tfschema.Schema, ...]) -> None:
    assert tfschema.check(INFRA, schemas) == []


def _broken(tmp_path: Path, file_name: str, old: str, new: str, count: int = 1) -> Path:
    for path in INFRA.glob("*.tf"):
        shutil.copy(path, tmp_path / path.name)
    target = tmp_path / file_name
    text = target.read_text(encoding="utf-8")
    assert text.count(old) >= count, f"{old!r} is no longer in infra/{file_name}"
    target.write_text(text.replace(old, new, count), encoding="utf-8")
    return tmp_path


# (file, text, replacement, the problem expected, or each of the problems expected)
BREAKAGES: dict[str, tuple[str, str, str, str | tuple[str, ...]]] = {
    "unknown resource type": (
        "alerts.tf",
        'resource "google_monitoring_alert_policy" "dead_letters"',
        'resource "google_monitoring_alert_polcy" "dead_letters"',
        "no resource type google_monitoring_alert_polcy",
    ),
    "unknown data source type": (
        "locals.tf",
        'data "google_project" "this"',
        'data "google_projekt" "this"',
        # and the references to data.google_project.this no longer resolve
        ("no data type google_projekt", "refers to undeclared data.google_project.this"),
    ),
    "misspelt argument": (
        "pubsub.tf",
        "ack_deadline_seconds       = 60",
        "ack_deadline_second        = 60",
        "unsupported argument ack_deadline_second",
    ),
    "misspelt nested argument": (
        "function.tf",
        "max_instance_request_concurrency = var.concurrency",
        "max_instance_concurrency = var.concurrency",
        "service_config: unsupported argument max_instance_concurrency",
    ),
    "misspelt data source argument": (
        "function.tf",
        'output_file_mode = "0666"',
        'output_filemode = "0666"',
        "unsupported argument output_filemode",
    ),
    "misspelt block": (
        "function.tf",
        "  versioning {",
        "  versionning {",
        "unsupported block versionning",
    ),
    "block written as an argument": (
        "firestore.tf",
        "ttl_config {}",
        "ttl_config = {}",
        "ttl_config is a block, written as an argument",
    ),
    "argument written as a block": (
        "monitoring.tf",
        "  labels = {\n    email_address",
        "  labels {\n    email_address",
        "labels is an argument, written as a block",
    ),
    "computed attribute set": (
        "function.tf",
        '    ingress_settings               = "ALLOW_ALL"',
        '    ingress_settings               = "ALLOW_ALL"\n    uri = "https://example.com"',
        "uri is read-only (computed)",
    ),
    "required argument missing": (
        "pubsub.tf",
        "  topic                      = each.value.id\n  ack_deadline_seconds",
        "  ack_deadline_seconds",
        "google_pubsub_subscription.relay: required argument topic is missing",
    ),
    "required nested argument missing": (
        "monitoring.tf",
        '    metric_kind  = "DELTA"\n',
        "",
        "metric_descriptor: required argument metric_kind is missing",
    ),
    "single block repeated": (
        "function.tf",
        "  versioning {\n    enabled = true\n  }\n",
        "  versioning {\n    enabled = true\n  }\n  versioning {\n    enabled = false\n  }\n",
        "versioning may appear once, found 2",
    ),
    "value outside the documented enum": (
        "function.tf",
        'ingress_settings               = "ALLOW_ALL"',
        'ingress_settings               = "ALLOW_EVERYONE"',
        "ingress_settings = 'ALLOW_EVERYONE' is not one of",
    ),
    "dynamic block of an unknown name": (
        "monitoring.tf",
        'dynamic "labels"',
        'dynamic "label"',
        "dynamic 'label' names no block",
    ),
    "dynamic block content with an unknown argument": (
        "monitoring.tf",
        '        value_type = "STRING"',
        '        value_typ  = "STRING"',
        "metric_descriptor.labels: unsupported argument value_typ",
    ),
    "dynamic block content outside the enum": (
        "monitoring.tf",
        '        value_type = "STRING"',
        '        value_type = "TEXT"',
        "value_type = 'TEXT' is not one of",
    ),
    "reference to an unknown attribute": (
        "function.tf",
        "bucket = google_storage_bucket.source.name",
        "bucket = google_storage_bucket.source.bucket_name",
        "google_storage_bucket has no attribute 'bucket_name'",
    ),
    "reference to an attribute of the wrong nested block": (
        "outputs.tf",
        "google_cloudfunctions2_function.relay.service_config[0].uri",
        "google_cloudfunctions2_function.relay.build_config[0].uri",
        "has no attribute 'uri' in build_config",
    ),
    "reference to a data source attribute that does not exist": (
        "function.tf",
        "data.archive_file.source.output_md5",
        "data.archive_file.source.output_md6",
        "archive_file has no attribute 'output_md6'",
    ),
    "reference to an undeclared resource": (
        "iam.tf",
        "secret_id = google_secret_manager_secret.signing_secrets.secret_id",
        "secret_id = google_secret_manager_secret.signing_secret.secret_id",
        "refers to undeclared google_secret_manager_secret.signing_secret",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_checker_catches(
    breakage: str, tmp_path: Path, schemas: tuple[tfschema.Schema, ...]
) -> None:
    file_name, old, new, expected = BREAKAGES[breakage]
    fragments = (expected,) if isinstance(expected, str) else expected
    problems = tfschema.check(_broken(tmp_path, file_name, old, new), schemas)
    for fragment in fragments:
        assert any(fragment in problem for problem in problems), f"{breakage}: not caught"
    for problem in problems:
        assert any(fragment in problem for fragment in fragments), f"unexpected: {problem}"


def test_a_wheel_that_does_not_match_its_pin_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tfschema, "CACHE", tmp_path)
    (tmp_path / "wheels").mkdir()
    package = tfschema.TIME
    (tmp_path / "wheels" / package.wheel).write_bytes(b"not the pinned wheel")
    with pytest.raises(RuntimeError, match="sha256"):
        tfschema._download(package)
    assert not (tmp_path / "wheels" / package.wheel).exists()
