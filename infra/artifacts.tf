# The functions' container images. Without build_config.docker_repository, Cloud Functions pushes
# to a gcf-artifacts repository it creates on the first build (so no grant can name it) and
# never cleans up. Here the build account may write to this repository only, and old images are
# deleted: https://cloud.google.com/artifact-registry/docs/repositories/cleanup-policy (a version
# matching a keep policy is kept even when a delete policy matches it too).
resource "google_artifact_registry_repository" "functions" {
  #checkov:skip=CKV_GCP_84:Holds only the functions' images, built from this repository's public source; Google-managed encryption suffices, and a CMEK key would add a key ring and service-agent grants.
  project       = var.project_id
  location      = var.region
  repository_id = "${var.name_prefix}-functions"
  description   = "Container images of the ${var.name_prefix} functions, built by Cloud Build."
  format        = "DOCKER"

  cleanup_policy_dry_run = false

  # Each function's serving image and the ones before it, for a rollback.
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s"
    }
  }

  depends_on = [time_sleep.apis_enabled]
}
