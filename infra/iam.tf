# The function's own identity: it may read its secret, use Firestore and publish to its topics,
# and nothing else. Cloud Run collects stdout logs without any role on the runtime account.
resource "google_service_account" "relay" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-fn"
  display_name = "Gemini webhook relay (runtime)"
  description  = "Runtime identity of the ${var.name_prefix} function."

  depends_on = [time_sleep.apis_enabled]
}

# Firestore has no per-collection (or per-document) IAM, so the narrowest grant that lets the
# function run transactions on its delivery records is datastore.user on the project.
resource "google_project_iam_member" "relay_datastore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.runtime_member
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

# Pub/Sub's own service agent moves messages to dead-letter topics: it must publish there and
# acknowledge the message on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = google_pubsub_topic.dead_letter

  project = var.project_id
  topic   = each.value.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent

  # The service agent exists only once the Pub/Sub API has been enabled for a while.
  depends_on = [time_sleep.apis_enabled]
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  for_each = google_pubsub_subscription.relay

  project      = var.project_id
  subscription = each.value.name
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

# Build logs, and pushing the image to the gcf-artifacts repository that Cloud Functions creates
# itself (it does not exist before the first build, so the grant cannot name it).
resource "google_project_iam_member" "build" {
  for_each = var.build_service_account == null ? toset([
    "roles/logging.logWriter",
    "roles/artifactregistry.writer",
  ]) : toset([])

  project = var.project_id
  role    = each.value
  member  = local.build_member
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

# A new service account and new grants take a minute or more to be honoured everywhere; a
# function deployed before that fails its build or its first revision ("permission denied").
resource "time_sleep" "iam_propagated" {
  create_duration = "60s"
  triggers = {
    runtime   = google_service_account.relay.email
    build     = local.build_service_account
    datastore = google_project_iam_member.relay_datastore.id
    secret    = google_secret_manager_secret_iam_member.relay_accessor.id
    topics    = join(",", [for grant in google_pubsub_topic_iam_member.relay_publisher : grant.id])
    builder   = join(",", concat([for grant in google_project_iam_member.build : grant.id], google_project_iam_member.build_source_reader[*].id))
  }
}
