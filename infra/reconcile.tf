# `reconcile`: the scheduled safety net (the contract's "Safety net"). Same source archive as the
# receiver, its own identity, reachable only by its Cloud Scheduler job.

# The Gemini API key reconcile calls the API with. Versions are added with gcloud, never here,
# so the key never enters the state. Kept on destroy like the signing secrets (secrets.tf).
resource "google_secret_manager_secret" "gemini_api_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-gemini-api-key"

  replication {
    auto {}
  }

  depends_on = [time_sleep.apis_enabled]

  lifecycle {
    prevent_destroy = true
  }
}

resource "google_service_account" "reconcile" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-reconcile"
  display_name = "Gemini webhook relay (reconcile)"
  description  = "Runtime identity of the ${var.name_prefix}-reconcile function."

  depends_on = [time_sleep.apis_enabled]
}

# Firestore has no per-collection IAM: datastore.user on the relay's database, as for the
# receiver.
resource "google_project_iam_member" "reconcile_datastore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.reconcile_member

  condition {
    title       = "relay database only"
    description = "The relay's Firestore database."
    expression  = local.database_condition
  }

  # A deployment that had the unconditioned grant gets the new one before losing the old.
  lifecycle {
    create_before_destroy = true
  }
}

resource "google_pubsub_topic_iam_member" "reconcile_publisher" {
  for_each = google_pubsub_topic.relay

  project = var.project_id
  topic   = each.value.name
  role    = "roles/pubsub.publisher"
  member  = local.reconcile_member
}

resource "google_secret_manager_secret_iam_member" "reconcile_api_key" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.gemini_api_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.reconcile_member
}

# A new account and its grants take a while to be honoured; the first revision needs them. The
# same wait as the receiver's (iam.tf), running beside it; the build's grants are waited for by
# time_sleep.iam_propagated, which the function depends on too.
resource "time_sleep" "reconcile_iam_propagated" {
  create_duration = "${local.iam_propagation_seconds}s"
  triggers = {
    runtime   = google_service_account.reconcile.email
    datastore = google_project_iam_member.reconcile_datastore.id
    secret    = google_secret_manager_secret_iam_member.reconcile_api_key.id
    topics    = join(",", [for grant in google_pubsub_topic_iam_member.reconcile_publisher : grant.id])
  }
}

resource "google_cloudfunctions2_function" "reconcile" {
  project     = var.project_id
  location    = var.region
  name        = "${var.name_prefix}-reconcile"
  description = "Publishes the terminal job events Gemini never delivered, and reports disabled webhooks."

  build_config {
    runtime           = "python312"
    entry_point       = "reconcile"
    service_account   = local.build_service_account
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.reconcile.email
    available_memory      = "512Mi"
    available_cpu         = "1"
    # One run at a time is all a schedule needs; two would be safe, never useful.
    max_instance_request_concurrency = 1
    min_instance_count               = 0
    max_instance_count               = 1
    # A run stops within its 240 s budget (webhook_relay.reconcile.RUN_BUDGET_SECONDS).
    timeout_seconds = local.reconcile_timeout_seconds
    # Cloud Scheduler in the same project counts as internal traffic; nothing else needs in.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true

    environment_variables = {
      for name, value in local.reconcile_environment : name => value if value != null
    }

    secret_volumes {
      mount_path = local.api_key_mount_path
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_api_key.secret_id

      versions {
        version = "latest"
        path    = local.api_key_file_name
      }
    }
  }

  depends_on = [time_sleep.apis_enabled, time_sleep.iam_propagated, time_sleep.reconcile_iam_propagated]

  lifecycle {
    # Job records must outlive the look-back, or a batch delivered 25-49 h ago (record expired,
    # batch still listed) would be reconciled, and published, a second time.
    precondition {
      condition     = var.reconcile_lookback_hours <= var.dedup_ttl_hours
      error_message = "reconcile_lookback_hours must not exceed dedup_ttl_hours (RELAY_RECONCILE_LOOKBACK_HOURS <= RELAY_DEDUP_TTL_HOURS)."
    }
  }
}

# The scheduler's identity: it may invoke reconcile, and nothing else.
resource "google_service_account" "reconcile_invoker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-sched"
  display_name = "Gemini webhook relay (reconcile scheduler)"
  description  = "Cloud Scheduler invokes ${var.name_prefix}-reconcile as this account."

  depends_on = [time_sleep.apis_enabled]
}

resource "google_cloud_run_service_iam_member" "reconcile_invoker" {
  project  = var.project_id
  location = google_cloudfunctions2_function.reconcile.location
  service  = google_cloudfunctions2_function.reconcile.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.reconcile_invoker.email}"
}

resource "google_cloud_scheduler_job" "reconcile" {
  project          = var.project_id
  region           = local.scheduler_region
  name             = "${var.name_prefix}-reconcile"
  description      = "Runs ${var.name_prefix}-reconcile."
  schedule         = var.reconcile_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "${local.reconcile_timeout_seconds + 20}s"

  # A failed run is not retried: the next one, minutes later, picks up where it stopped.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.reconcile.service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.reconcile_invoker.email
      audience              = google_cloudfunctions2_function.reconcile.service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_service_iam_member.reconcile_invoker]
}

# Job records expire like delivery records (expire_at, written by webhook_relay.jobs); read by
# key or by state, never by expire_at, so its indexes are disabled. After the delivery records'
# field: Firestore runs one field operation at a time.
resource "google_firestore_field" "job_expiry" {
  project    = var.project_id
  database   = var.firestore_database
  collection = var.jobs_collection
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_field.delivery_expiry]
}

# reconcile checks watched jobs least recently checked first:
# `where state in [...] order by checked_at` needs this composite index in production (the
# emulator never asks for one). After the field operations, one index operation at a time.
resource "google_firestore_index" "jobs_by_checked_at" {
  project     = var.project_id
  database    = var.firestore_database
  collection  = var.jobs_collection
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }

  fields {
    field_path = "checked_at"
    order      = "ASCENDING"
  }

  depends_on = [google_firestore_field.job_expiry]
}

locals {
  reconcile_member = "serviceAccount:${google_service_account.reconcile.email}"
  # Cloud Scheduler is offered in fewer regions than Cloud Run functions.
  scheduler_region          = coalesce(var.scheduler_region, var.region)
  reconcile_timeout_seconds = 300

  api_key_mount_path = "/etc/gemini"
  api_key_file_name  = "gemini-api-key"

  # Only names webhook_relay.reconcile_app reads (its ENVIRONMENT, and what it shares with the
  # receiver, set to the same values so both claim the same job records and topics).
  reconcile_environment = {
    GOOGLE_CLOUD_PROJECT           = var.project_id
    RELAY_TOPIC_PREFIX             = var.topic_prefix
    RELAY_ROUTES                   = var.routes == null ? null : jsonencode(var.routes)
    RELAY_DEDUP_COLLECTION         = var.dedup_collection
    RELAY_DEDUP_TTL_HOURS          = tostring(var.dedup_ttl_hours)
    RELAY_CLAIM_LEASE_SECONDS      = tostring(var.claim_lease_seconds)
    RELAY_JOBS_COLLECTION          = var.jobs_collection
    RELAY_PUBLIC_URL               = local.public_url
    RELAY_RECONCILE_GRACE_SECONDS  = tostring(var.reconcile_grace_seconds)
    RELAY_RECONCILE_LOOKBACK_HOURS = tostring(var.reconcile_lookback_hours)
    RELAY_REENABLE_WEBHOOKS        = tostring(var.reenable_webhooks)
    GEMINI_API_KEY_FILE            = "${local.api_key_mount_path}/${local.api_key_file_name}"
  }

  reconcile_log_filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=\"${var.name_prefix}-reconcile\"",
  ])

  # The log lines reconcile writes (webhook_relay.reconcile) that alerts count.
  reconcile_metrics = {
    webhook_disabled = {
      description = "Runs that found a relay webhook Gemini disabled after failed deliveries."
      filter      = "severity=ERROR AND jsonPayload.status=\"webhook_disabled\""
      label       = null
    }
    missed_event_reconciled = {
      description = "Terminal job events Gemini never delivered, published by reconcile, by event type."
      filter      = "severity=WARNING AND jsonPayload.status=\"missed_event_reconciled\""
      label       = "type"
    }
    reconcile_runs = {
      description = "Reconcile runs that reached Firestore or the Gemini API (their summary line)."
      filter      = "jsonPayload.message=\"reconcile run\" AND jsonPayload.status!=\"run_unavailable\""
      label       = null
    }
  }
}

resource "google_logging_metric" "reconcile" {
  for_each = local.reconcile_metrics

  project     = var.project_id
  name        = "${var.name_prefix}/${each.key}"
  description = each.value.description
  filter      = "${local.reconcile_log_filter} AND ${each.value.filter}"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "${var.name_prefix} ${replace(each.key, "_", " ")}"

    dynamic "labels" {
      for_each = each.value.label == null ? [] : [each.value.label]
      content {
        key        = labels.value
        value_type = "STRING"
      }
    }
  }

  # The event type is logged as event_type; the metric calls it type.
  label_extractors = each.value.label == null ? {} : {
    (each.value.label) = "EXTRACT(jsonPayload.event_type)"
  }

  depends_on = [time_sleep.apis_enabled]
}
