# The function's own identity: it may read its secret, use Firestore and publish to its topics,
# and nothing else. Cloud Run collects stdout logs without any role on the runtime account.
resource "google_service_account" "relay" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-fn"
  display_name = "Gemini webhook relay (runtime)"
  description  = "Runtime identity of the ${var.name_prefix} function."
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
}

resource "google_pubsub_subscription_iam_member" "dead_letter_source_subscriber" {
  for_each = google_pubsub_subscription.relay

  project      = var.project_id
  subscription = each.value.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
