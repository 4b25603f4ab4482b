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
  # A successful acknowledgement is final (https://cloud.google.com/pubsub/docs/exactly-once-delivery):
  # guaranteed within one region only, at a higher delivery latency. Changed in place.
  enable_exactly_once_delivery = var.exactly_once_delivery

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

# Extra subscriptions with a filter (e.g. on the um_<key> attributes the relay mirrors from
# user_metadata), beside each topic's <topic>-sub, which they never change. Pub/Sub cannot change
# a subscription's filter: a new filter replaces the subscription, and its backlog is lost.
# Their dead letters go to their topic's dead-letter topic, like <topic>-sub's.
resource "google_pubsub_subscription" "filtered" {
  for_each = var.filtered_subscriptions

  project                      = var.project_id
  name                         = each.key
  topic                        = try(google_pubsub_topic.relay[each.value.topic].id, each.value.topic)
  filter                       = each.value.filter
  ack_deadline_seconds         = each.value.ack_deadline_seconds
  message_retention_duration   = var.message_retention_duration
  retain_acked_messages        = true
  enable_exactly_once_delivery = var.exactly_once_delivery

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = try(google_pubsub_topic.dead_letter[each.value.topic].id, each.value.topic)
    max_delivery_attempts = var.max_delivery_attempts
  }

  depends_on = [google_pubsub_topic_iam_member.dead_letter_publisher]

  lifecycle {
    precondition {
      condition     = contains(local.topic_ids, each.value.topic)
      error_message = "filtered_subscriptions[\"${each.key}\"].topic must be one of the relay's topics: ${join(", ", sort(local.topic_ids))}."
    }
    precondition {
      condition     = !contains(flatten([for topic in local.topic_ids : ["${topic}-sub", "${topic}-dead-letter-sub"]]), each.key)
      error_message = "filtered_subscriptions[\"${each.key}\"]: that id belongs to a subscription Terraform already manages."
    }
  }
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
