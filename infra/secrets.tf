# Holds the Standard Webhooks signing secrets (whsec_..., one per line; several during a
# rotation). Versions are added with gcloud, never here, so no secret value enters the state.
# Gemini shows a webhook's secret once: a destroy (or a name_prefix change, which replaces the
# secret) would lose it, so Terraform refuses; the README says how to tear down anyway.
resource "google_secret_manager_secret" "signing_secrets" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-signing-secrets"

  replication {
    auto {}
  }

  depends_on = [time_sleep.apis_enabled]

  lifecycle {
    prevent_destroy = true
  }
}
