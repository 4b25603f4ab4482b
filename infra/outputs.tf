output "function_url" {
  description = "HTTPS endpoint to register with Gemini's WebhookService (and to put in jwt_audiences for JWT-signed deliveries): public_url, or the function's deterministic Cloud Run URL, known before the function exists."
  value       = local.public_url
}

output "service_url" {
  description = "The URL Cloud Run reports for the receiver's service (its hash-based run.app URL); it serves the same function."
  value       = google_cloudfunctions2_function.relay.service_config[0].uri
}

output "function_name" {
  description = "Name of the function and of its Cloud Run service."
  value       = google_cloudfunctions2_function.relay.name
}

output "runtime_service_account" {
  description = "Email of the function's runtime service account."
  value       = google_service_account.relay.email
}

output "signing_secret_id" {
  description = "Secret Manager secret holding the webhook signing secrets; add versions with gcloud."
  value       = google_secret_manager_secret.signing_secrets.secret_id
}

output "topic_ids" {
  description = "Topic ids the function publishes to, the unrouted one included."
  value       = sort([for topic in google_pubsub_topic.relay : topic.name])
}

output "unrouted_topic_id" {
  description = "Topic of unmatched event types and quarantined bodies."
  value       = google_pubsub_topic.relay[local.unrouted_topic].name
}

output "subscription_ids" {
  description = "Subscription of each topic, by topic id."
  value       = { for topic, subscription in google_pubsub_subscription.relay : topic => subscription.name }
}

output "dead_letter_topic_ids" {
  description = "Dead-letter topic of each topic's subscription, by topic id."
  value       = { for topic, dead_letter in google_pubsub_topic.dead_letter : topic => dead_letter.name }
}

output "dead_letter_subscription_ids" {
  description = "Subscription of each dead-letter topic (for webhook-relay redrive), by topic id."
  value       = { for topic, subscription in google_pubsub_subscription.dead_letter : topic => subscription.name }
}

output "source_bucket" {
  description = "Bucket holding the function's source archives."
  value       = google_storage_bucket.source.name
}

output "dashboard_url" {
  description = "The relay's Cloud Monitoring dashboard."
  value       = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.relay.id), 3)}?project=${var.project_id}"
}

output "reconcile_function_name" {
  description = "Name of the reconcile function (private; run by its Cloud Scheduler job)."
  value       = google_cloudfunctions2_function.reconcile.name
}

output "reconcile_scheduler_job" {
  description = "Cloud Scheduler job that runs reconcile; `gcloud scheduler jobs run` starts a run now."
  value       = google_cloud_scheduler_job.reconcile.name
}

output "gemini_api_key_secret_id" {
  description = "Secret Manager secret holding the Gemini API key reconcile uses; add a version with gcloud."
  value       = google_secret_manager_secret.gemini_api_key.secret_id
}
