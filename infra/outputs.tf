output "function_url" {
  description = "HTTPS endpoint to register with Gemini's WebhookService (and to put in jwt_audiences for JWT-signed deliveries)."
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
