# Holds the Standard Webhooks signing secrets (whsec_..., one per line; several during a
# rotation). Versions are added with gcloud, never here, so no secret value enters the state.
resource "google_secret_manager_secret" "signing_secrets" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-signing-secrets"

  replication {
    auto {}
  }

  depends_on = [time_sleep.apis_enabled]
}
