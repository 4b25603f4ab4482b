# One topic per routed topic id plus the unrouted one. Each gets a subscription, so nothing
# published is dropped before a consumer exists, and a dead-letter topic for messages its
# subscriber keeps failing on. Retention of acknowledged messages lets a late subscriber seek back.
resource "google_pubsub_topic" "relay" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest suffices for events that carry job ids and file links, never job output; a CMEK key would add a key ring and service-agent grants.
  for_each = local.topic_ids

  project                    = var.project_id
  name                       = each.key
  message_retention_duration = var.message_retention_duration

  depends_on = [time_sleep.apis_enabled]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption at rest suffices for events that carry job ids and file links, never job output; a CMEK key would add a key ring and service-agent grants.
  for_each = local.topic_ids

  project                    = var.project_id
  name                       = "${each.key}-dead-letter"
  message_retention_duration = var.message_retention_duration

  depends_on = [time_sleep.apis_enabled]
}

resource "google_pubsub_subscription" "relay" {
  for_each = google_pubsub_topic.relay

  project                    = var.project_id
  name                       = "${each.key}-sub"
  topic                      = each.value.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.message_retention_duration
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.max_delivery_attempts
  }

  # Dead-lettering starts only once the service agent may publish there.
  depends_on = [google_pubsub_topic_iam_member.dead_letter_publisher]
}

# Dead letters wait here for `webhook-relay redrive` (or a person); the alert on
# undelivered messages watches these subscriptions.
resource "google_pubsub_subscription" "dead_letter" {
  for_each = google_pubsub_topic.dead_letter

  project                    = var.project_id
  name                       = "${each.value.name}-sub"
  topic                      = each.value.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.message_retention_duration
  retain_acked_messages      = true

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}
