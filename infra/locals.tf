locals {
  # The code's default route table (webhook_relay.routing.default_routes), one topic per event
  # family; tests/test_infra.py fails if the two drift apart.
  default_route_families = ["batch", "interaction", "video"]
  default_routes         = { for family in local.default_route_families : "${family}.*" => "${var.topic_prefix}${family}" }

  routes         = var.routes == null ? local.default_routes : var.routes
  unrouted_topic = "${var.topic_prefix}unrouted"

  # Every topic the function can publish to: a custom table replaces the defaults entirely, and
  # unmatched or unreadable deliveries always go to the unrouted topic.
  topic_ids = toset(concat(values(local.routes), [local.unrouted_topic]))

  # The secret is mounted as a file (version "latest"), so a new version reaches running
  # instances without a redeploy; the code re-reads the file when it changes.
  secrets_mount_path   = "/etc/secrets"
  secrets_file_name    = "webhook-signing-secrets"
  signing_secrets_file = "${local.secrets_mount_path}/${local.secrets_file_name}"

  # Only names from the contract's Configuration table; null values are left out.
  function_environment = {
    GOOGLE_CLOUD_PROJECT         = var.project_id
    RELAY_TOPIC_PREFIX           = var.topic_prefix
    RELAY_ROUTES                 = var.routes == null ? null : jsonencode(var.routes)
    RELAY_DEDUP_COLLECTION       = var.dedup_collection
    RELAY_JOBS_COLLECTION        = var.jobs_collection
    RELAY_DEDUP_TTL_HOURS        = tostring(var.dedup_ttl_hours)
    RELAY_CLAIM_LEASE_SECONDS    = tostring(var.claim_lease_seconds)
    GEMINI_JWT_AUDIENCE          = length(var.jwt_audiences) > 0 ? join(",", var.jwt_audiences) : null
    GEMINI_JWT_ISSUERS           = length(var.jwt_issuers) > 0 ? join(",", var.jwt_issuers) : null
    GEMINI_DYNAMIC_WEBHOOKS      = tostring(var.dynamic_webhooks)
    WEBHOOK_SIGNING_SECRETS_FILE = local.signing_secrets_file
    # functions-framework serves each instance with THREADS worker threads (default 4 per CPU):
    # fewer than the concurrency Cloud Run sends would queue requests inside the instance.
    THREADS = tostring(var.concurrency)
  }

  runtime_member = "serviceAccount:${google_service_account.relay.email}"
  # The build account in the form build_config wants (projects/<project>/serviceAccounts/<email>).
  build_service_account = var.build_service_account != null ? var.build_service_account : one(google_service_account.build[*].id)
  # From the variable when one is given: the dedicated account does not exist then.
  build_member   = "serviceAccount:${var.build_service_account != null ? element(split("/", var.build_service_account), 3) : one(google_service_account.build[*].email)}"
  source_buckets = [google_storage_bucket.source.name, "gcf-v2-sources-${data.google_project.this.number}-${var.region}"]

  # Cloud Run's deterministic URL, known while planning (a 2nd gen function is a Cloud Run
  # service): https://cloud.google.com/run/docs/triggering/https-request#deterministic. The
  # function's service_config[0].uri is known only after apply, and an environment variable
  # built from it fails a first apply ("Provider produced inconsistent final plan",
  # hashicorp/terraform-provider-google#18747, #22497).
  run_url    = "https://${var.name_prefix}-${data.google_project.this.number}.${var.region}.run.app"
  public_url = coalesce(var.public_url, var.relay_public_url, local.run_url)
}

data "google_project" "this" {
  project_id = var.project_id
}
