data "archive_file" "source" {
  type        = "zip"
  source_dir  = "${path.module}/../functions"
  output_path = "${path.module}/.build/function-source.zip"
  # Every file gets the same mode, so a developer's umask or checkout does not change the hash
  # (and redeploy the function).
  output_file_mode = "0666"
  # Only what the functions run: the command line, the emulator and signing helpers (which
  # import development-only packages) and caches stay out.
  excludes = [
    "webhook_relay/cli/**",
    "webhook_relay/emulators.py",
    "webhook_relay/signing.py",
    "requirements.in",
    "**/__pycache__/**",
    "**/*.pyc",
    "**/*.egg-info/**",
  ]
}

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Holds only the function's source archives, written by Terraform; Cloud Audit Logs record changes, and access logs would need a second bucket nobody reads.
  project                     = var.project_id
  name                        = "${var.project_id}-${var.name_prefix}-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Archives are reproducible from git, so destroy may empty the bucket.
  force_destroy = true

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis_enabled]
}

resource "google_storage_bucket_object" "source" {
  # Named by content, so a code change replaces the object and redeploys the function.
  name   = "function-source-${data.archive_file.source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}

resource "google_cloudfunctions2_function" "relay" {
  #checkov:skip=CKV_GCP_124:Gemini delivers webhooks from the public internet, so ingress must be ALLOW_ALL; every request is authenticated by its webhook signature.
  project     = var.project_id
  location    = var.region
  name        = var.name_prefix
  description = "Verifies Gemini API webhooks, deduplicates them in Firestore and publishes CloudEvents to Pub/Sub."

  build_config {
    runtime         = "python312"
    entry_point     = "receive_webhook"
    service_account = local.build_service_account

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.relay.email
    available_memory                 = var.memory
    available_cpu                    = "1"
    max_instance_request_concurrency = var.concurrency
    min_instance_count               = var.min_instances
    max_instance_count               = var.max_instances
    # The code answers within 10 s; the margin covers a cold start.
    timeout_seconds                = 30
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true

    environment_variables = {
      for name, value in local.function_environment : name => value if value != null
    }

    secret_volumes {
      mount_path = local.secrets_mount_path
      project_id = var.project_id
      secret     = google_secret_manager_secret.signing_secrets.secret_id

      versions {
        version = "latest"
        path    = local.secrets_file_name
      }
    }
  }

  # The build needs its account's grants, and the first revision starts only if it can already
  # read the secret and reach its data: both wait until the grants have propagated.
  depends_on = [time_sleep.apis_enabled, time_sleep.iam_propagated]
}

# Gemini cannot present Google credentials, so the endpoint is public. Every request is
# authenticated by the code instead: HMAC or ed25519 signatures, or a Google-signed JWT,
# are verified on the raw body before anything is parsed or stored.
resource "google_cloud_run_service_iam_member" "public_invoker" {
  #checkov:skip=CKV_GCP_102:Gemini cannot present Google credentials; each request is authenticated by its webhook signature in the code.
  project  = var.project_id
  location = google_cloudfunctions2_function.relay.location
  service  = google_cloudfunctions2_function.relay.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
