# The function's own identity: it may read its secret, use its Firestore database and publish to
# its topics, and nothing else. Cloud Run collects stdout logs without any role on the runtime
# account.
resource "google_service_account" "relay" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-fn"
  display_name = "Gemini webhook relay (runtime)"
  description  = "Runtime identity of the ${var.name_prefix} function."

  depends_on = [time_sleep.apis_enabled]
}

# Firestore has no per-collection IAM; an IAM condition on the database's name keeps the role to
# the relay's database (Firestore documents per-database access with IAM conditions:
# https://cloud.google.com/firestore/docs/security/iam, IAM Conditions).
resource "google_project_iam_member" "relay_datastore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.runtime_member

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

resource "google_pubsub_topic_iam_member" "relay_publisher" {
  for_each = google_pubsub_topic.relay

  project = var.project_id
  topic   = each.value.name
  role    = "roles/pubsub.publisher"
  member  = local.runtime_member
}

resource "google_secret_manager_secret_iam_member" "relay_accessor" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.signing_secrets.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.runtime_member
}

# Pub/Sub's service agent moves messages to dead-letter topics. It is created lazily, some time
# after the API is enabled, so a grant to it can fail on a new project ("Service account ...
# does not exist"); asking for it creates it now (google-beta only).
resource "google_project_service_identity" "pubsub" {
  provider = google-beta

  project = var.project_id
  service = "pubsub.googleapis.com"

  depends_on = [time_sleep.apis_enabled]
}

# The service agent must publish to each dead-letter topic and acknowledge the message on the
# source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = google_pubsub_topic.dead_letter

  project = var.project_id
  topic   = each.value.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  for_each = merge(
    { for topic, subscription in google_pubsub_subscription.relay : topic => subscription.name },
    { for id, subscription in google_pubsub_subscription.filtered : "filtered:${id}" => subscription.name },
  )

  project      = var.project_id
  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# The identity Cloud Build runs the function's build as. Since mid-2024 a new project's default
# build account may lack these roles, or not exist; a dedicated one works everywhere and holds
# only what a 2nd gen build needs. Set var.build_service_account to use another one instead.
resource "google_service_account" "build" {
  count = var.build_service_account == null ? 1 : 0

  project      = var.project_id
  account_id   = "${var.name_prefix}-build"
  display_name = "Gemini webhook relay (build)"
  description  = "Builds the ${var.name_prefix} functions' container images."

  depends_on = [time_sleep.apis_enabled]
}

# Build logs.
resource "google_project_iam_member" "build" {
  for_each = var.build_service_account == null ? toset(["roles/logging.logWriter"]) : toset([])

  project = var.project_id
  role    = each.value
  member  = local.build_member
}

# Pushing the images: only to the repository below (the given build account too, so it needs
# no project-wide writer role).
resource "google_artifact_registry_repository_iam_member" "build_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = local.build_member
}

# Reading the source archive: in our bucket, and in the gcf-v2-sources bucket Cloud Functions
# copies it to before the build (created by the first deploy, so no bucket-level grant can name
# it). A condition keeps the role to these two buckets.
resource "google_project_iam_member" "build_source_reader" {
  count = var.build_service_account == null ? 1 : 0

  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = local.build_member

  condition {
    title       = "function source buckets only"
    description = "The relay's source bucket and Cloud Functions' copy of it."
    expression = join(" || ", flatten([
      for bucket in local.source_buckets : [
        "resource.name == \"projects/_/buckets/${bucket}\"",
        "resource.name.startsWith(\"projects/_/buckets/${bucket}/\")",
      ]
    ]))
  }
}

# New service accounts and grants are not honoured everywhere at once: Google documents that
# an access change "typically" takes 2 minutes and can take 7 or more
# (https://cloud.google.com/iam/docs/access-change-propagation). A build or a first revision
# started earlier fails ("permission denied"). 180 s costs nothing on a first apply: the
# functions' builds still end before the alert policies' wait for their metrics (alerts.tf).
resource "time_sleep" "iam_propagated" {
  create_duration = "${local.iam_propagation_seconds}s"
  triggers = {
    runtime   = google_service_account.relay.email
    build     = local.build_service_account
    datastore = google_project_iam_member.relay_datastore.id
    secret    = google_secret_manager_secret_iam_member.relay_accessor.id
    topics    = join(",", [for grant in google_pubsub_topic_iam_member.relay_publisher : grant.id])
    builder   = join(",", concat([for grant in google_project_iam_member.build : grant.id], google_project_iam_member.build_source_reader[*].id, [google_artifact_registry_repository_iam_member.build_writer.id]))
  }
}

locals {
  iam_propagation_seconds = 180
  pubsub_service_agent    = google_project_service_identity.pubsub.member
  database_condition      = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""
}
