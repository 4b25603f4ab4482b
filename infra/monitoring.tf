# Counters built from the function's request log: one JSON line per request on stdout, which
# Cloud Logging stores as jsonPayload on the function's Cloud Run revision. The filters name the
# functions' services by their known names (function.tf, reconcile.tf), not through the function
# resources: the metrics are then created early, and their propagation wait (alerts.tf) runs
# beside the builds.
locals {
  request_log_filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=\"${var.name_prefix}\"",
  ])

  # Only verified deliveries carry a trustworthy event_type; refusals and failures are
  # counted without labels (their log lines say why in `detail`).
  request_metrics = {
    accepted     = { description = "Verified first deliveries, published.", label = "event_type" }
    duplicate    = { description = "Verified repeats of an already published webhook-id.", label = "event_type" }
    unauthorized = { description = "Deliveries refused with 401 (no signature matched, stale timestamp, invalid JWT).", label = null }
    quarantined  = { description = "Verified bodies that are not a JSON object with a string type, published to the unrouted topic.", label = null }
    unavailable  = { description = "Deliveries answered 503 because Firestore, Pub/Sub or the key set was unavailable or slow.", label = null }
  }

  alert_channels = concat(google_monitoring_notification_channel.email[*].id, var.notification_channels)
}

resource "google_logging_metric" "requests" {
  for_each = local.request_metrics

  project     = var.project_id
  name        = "${var.name_prefix}/${each.key}"
  description = each.value.description
  filter      = "${local.request_log_filter} AND jsonPayload.status=\"${each.key}\""

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "${var.name_prefix} ${each.key} deliveries"

    dynamic "labels" {
      for_each = each.value.label == null ? [] : [each.value.label]
      content {
        key        = labels.value
        value_type = "STRING"
      }
    }
  }

  label_extractors = each.value.label == null ? {} : {
    (each.value.label) = "EXTRACT(jsonPayload.${each.value.label})"
  }

  depends_on = [time_sleep.apis_enabled]
}

resource "google_monitoring_notification_channel" "email" {
  count = var.alert_email == null ? 0 : 1

  project      = var.project_id
  display_name = "${var.name_prefix} alerts"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }

  depends_on = [time_sleep.apis_enabled]
}
