resource "google_project_service" "relay" {
  for_each = var.enable_apis ? toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]) : toset([])

  project = var.project_id
  service = each.value

  # Other workloads in the project may use these APIs too.
  disable_on_destroy = false
}

# An enabled API answers "has not been used in project ... or it is disabled" for a minute or
# two, and its service agents (Pub/Sub's, which dead-letters messages) appear only then.
# Everything that calls these APIs depends on this wait, so a first apply succeeds in one run.
resource "time_sleep" "apis_enabled" {
  count = var.enable_apis ? 1 : 0

  create_duration = "90s"
  triggers        = { for service, api in google_project_service.relay : service => api.id }
}
