# The relay at a glance (URL in the outputs): deliveries by answer, latency, refusals by claimed
# scheme, 503s, unrouted and dead-lettered messages, instances. The per-status counters in
# monitoring.tf serve the alerts; these two carry the labels a dashboard groups by.
resource "google_logging_metric" "responses" {
  project     = var.project_id
  name        = "${var.name_prefix}/responses"
  description = "Every answered delivery, by answer status and claimed signature scheme."
  filter      = local.answer_log_filter

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "${var.name_prefix} answers"

    labels {
      key         = "status"
      value_type  = "STRING"
      description = "The answer's status: accepted, duplicate, unauthorized, unavailable, ..."
    }
    labels {
      key         = "signature"
      value_type  = "STRING"
      description = "The delivery's scheme: hmac, ed25519, keyset-ed25519 (a dynamic delivery signed with a key-set key), jwt; on a 401 only the claimed one (or none, unknown), which proves nothing."
    }
  }

  label_extractors = {
    status    = "EXTRACT(jsonPayload.status)"
    signature = "EXTRACT(jsonPayload.signature)"
  }

  depends_on = [time_sleep.apis_enabled]
}

resource "google_logging_metric" "latency" {
  project         = var.project_id
  name            = "${var.name_prefix}/latency"
  description     = "Time from a delivery's arrival to its answer, by answer status."
  filter          = local.answer_log_filter
  value_extractor = "EXTRACT(jsonPayload.latency_ms)"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "ms"
    display_name = "${var.name_prefix} answer latency"

    labels {
      key        = "status"
      value_type = "STRING"
    }
  }

  label_extractors = {
    status = "EXTRACT(jsonPayload.status)"
  }

  # 1 ms to about 47 s in steps of 15 %: fine where answers are (tens of ms), and past the 10 s
  # budget.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 77
      growth_factor      = 1.15
      scale              = 1
    }
  }

  depends_on = [time_sleep.apis_enabled]
}

locals {
  # One line per answered delivery: the request log lines carry http_status, other lines don't.
  answer_log_filter = "${local.request_log_filter} AND jsonPayload.http_status:*"

  responses_metric = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.responses.name}\" AND resource.type=\"cloud_run_revision\""
  relay_service    = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloudfunctions2_function.relay.name}\""

  # Every filter the dashboard uses; dashboard.json.tftpl places them.
  dashboard_filters = {
    responses    = local.responses_metric
    latency      = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.latency.name}\" AND resource.type=\"cloud_run_revision\""
    accepted     = "${local.responses_metric} AND metric.labels.status=\"accepted\""
    unauthorized = "${local.responses_metric} AND metric.labels.status=\"unauthorized\""
    unavailable  = "${local.responses_metric} AND metric.labels.status=\"unavailable\""
    run_5xx      = "metric.type=\"run.googleapis.com/request_count\" AND ${local.relay_service} AND metric.labels.response_code_class=\"5xx\""
    instances    = "metric.type=\"run.googleapis.com/container/instance_count\" AND ${local.relay_service}"
    reconciled   = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.reconcile["missed_event_reconciled"].name}\" AND resource.type=\"cloud_run_revision\""
    unrouted     = "metric.type=\"pubsub.googleapis.com/topic/send_message_operation_count\" AND resource.type=\"pubsub_topic\" AND resource.labels.topic_id=\"${google_pubsub_topic.relay[local.unrouted_topic].name}\""
    dead_lettered = join(" AND ", [
      "metric.type=\"pubsub.googleapis.com/subscription/dead_letter_message_count\"",
      "resource.type=\"pubsub_subscription\"",
      "resource.labels.subscription_id=one_of(${join(",", [for subscription in google_pubsub_subscription.relay : "\"${subscription.name}\""])})",
    ])
    dead_letters_waiting = join(" AND ", [
      "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\"",
      "resource.type=\"pubsub_subscription\"",
      "resource.labels.subscription_id=one_of(${join(",", [for id in local.dead_letter_subscription_ids : "\"${id}\""])})",
    ])
  }
}

resource "google_monitoring_dashboard" "relay" {
  project = var.project_id
  dashboard_json = templatefile("${path.module}/dashboard.json.tftpl", {
    title   = var.name_prefix
    filters = local.dashboard_filters
  })
}
