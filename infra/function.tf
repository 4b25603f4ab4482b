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
    # Images go to a repository Terraform manages, with a cleanup policy (artifacts.tf).
    docker_repository = google_artifact_registry_repository.functions.id

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

  lifecycle {
    # Cloud Run gives the deterministic URL (local.run_url) only to a service whose
    # "<name>-<project number>" DNS label has at most 63 characters.
    precondition {
      condition     = length("${var.name_prefix}-${data.google_project.this.number}") <= 63
      error_message = "name_prefix is too long for Cloud Run's deterministic URL (\"<name_prefix>-<project number>\" must have at most 63 characters)."
    }
    precondition {
      condition     = var.min_instances <= var.max_instances
      error_message = "min_instances must not exceed max_instances."
    }
  }
}

# Gemini cannot present Google credentials, so the endpoint is public. Every request is
# authenticated by the code instead: HMAC or ed25519 signatures, or a Google-signed JWT,
# are verified on the raw body before anything is parsed or stored.
#
# Cloud Run recommends disabling its invoker IAM check over an allUsers binding, and it is the
# way that works under domain-restricted sharing (iam.allowedPolicyMemberDomains refuses
# allUsers): https://cloud.google.com/run/docs/authenticating/public. The Cloud Functions API
# has no such field and the provider none on google_cloudfunctions2_function
# (hashicorp/terraform-provider-google#23360), so gcloud sets it on the function's service,
# again after every deploy of the function, which owns that service.
resource "terraform_data" "invoker_iam_check_disabled" {
  count = var.public_access == "no_invoker_iam_check" ? 1 : 0

  triggers_replace = [
    google_cloudfunctions2_function.relay.update_time,
    google_cloudfunctions2_function.relay.service_config[0].service,
  ]

  provisioner "local-exec" {
    command = "gcloud run services update ${google_cloudfunctions2_function.relay.name} --no-invoker-iam-check --region ${var.region} --project ${var.project_id} --quiet"
  }
}

resource "google_cloud_run_service_iam_member" "public_invoker" {
  #checkov:skip=CKV_GCP_102:Gemini cannot present Google credentials; each request is authenticated by its webhook signature in the code.
  count = var.public_access == "all_users" ? 1 : 0

  project  = var.project_id
  location = google_cloudfunctions2_function.relay.location
  service  = google_cloudfunctions2_function.relay.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# The functions are built by Cloud Build in their region, and Cloud Build restricts some
# projects, depending on usage (new ones among them), to six regions:
# https://cloud.google.com/build/docs/locations#restricted_regions_for_some_projects. A plan
# elsewhere warns (projects without the restriction build anywhere).
check "build_region" {
  assert {
    condition     = contains(local.build_regions_for_new_projects, var.region)
    error_message = "Cloud Build may restrict this project to ${join(", ", local.build_regions_for_new_projects)}; a build in ${var.region} would then fail. Choose one of them as region if this is a new project."
  }
}

locals {
  build_regions_for_new_projects = ["us-central1", "us-west2", "europe-west1", "asia-east1", "australia-southeast1", "southamerica-east1"]
}
