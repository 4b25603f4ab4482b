# Monitoring refuses an alert on a log-based metric until the metric has propagated ("Cannot
# find metric(s)", up to minutes; hashicorp/terraform-provider-google#11102). If an apply still
# hits it, apply again.
resource "time_sleep" "metrics_propagate" {
  create_duration = "120s"
  triggers = merge(
    { for name, metric in google_logging_metric.requests : name => metric.name },
    { for name, metric in google_logging_metric.reconcile : name => metric.name },
  )
}

locals {
  user_metric_filter = {
    for name, metric_name in time_sleep.metrics_propagate.triggers :
    name => "metric.type=\"logging.googleapis.com/user/${metric_name}\" AND resource.type=\"cloud_run_revision\""
  }

  dead_letter_subscription_ids = [for subscription in google_pubsub_subscription.dead_letter : subscription.name]
}

resource "google_monitoring_alert_policy" "unauthorized_surge" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: surge of 401 answers"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels

  conditions {
    display_name = "More than ${var.unauthorized_alert_threshold} deliveries refused in 5 minutes"
    condition_threshold {
      filter          = local.user_metric_filter["unauthorized"]
      comparison      = "COMPARISON_GT"
      threshold_value = var.unauthorized_alert_threshold
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Many webhook deliveries were refused with 401: no signature matched, the timestamp was
      outside the tolerance, or the JWT was invalid.

      - Right after a secret rotation: the secret file probably lacks the new secret. Add a
        version holding the old and the new secret, one per line (see the README).
      - JWT deliveries: check that GEMINI_JWT_AUDIENCE (variable jwt_audiences) names the URL
        registered with Gemini.
      - Otherwise someone is probing the public URL. Nothing was published; Cloud Run's
        max instances bounds the cost.

      The `detail` field of the function's log lines (jsonPayload.status="unauthorized") says
      why each delivery was refused.
    EOT
  }
}

resource "google_monitoring_alert_policy" "unavailable" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: deliveries answered 503 or 5xx"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "The relay answered 503 (Firestore, Pub/Sub or key set unavailable)"
    condition_threshold {
      filter          = local.user_metric_filter["unavailable"]
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  # Catches what the relay cannot log itself: an instance that fails to start (bad
  # configuration), crashes or times out.
  conditions {
    display_name = "Cloud Run answered 5xx"
    condition_threshold {
      filter = join(" AND ", [
        "metric.type=\"run.googleapis.com/request_count\"",
        "resource.type=\"cloud_run_revision\"",
        "resource.labels.service_name=\"${google_cloudfunctions2_function.relay.name}\"",
        "metric.labels.response_code_class=\"5xx\"",
      ])
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Deliveries failed with a 5xx. Gemini retries them for 24 hours and nothing verified is
      lost, but a webhook that keeps failing may be disabled by Gemini
      (state disabled_due_to_failed_deliveries).

      - Status `unavailable` in the function's logs: Firestore, Pub/Sub or the JWT key set was
        down or slower than the 10 s budget. Check the Google Cloud status page and quotas.
      - 5xx without a relay log line: the instance did not start or crashed. The first log line
        of a failed start names the bad configuration variable; fix it and apply again.
      - After fixing, check the webhook's state in Gemini's WebhookService and re-enable it if
        needed.
    EOT
  }
}

resource "google_monitoring_alert_policy" "unrouted" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: events on the unrouted topic"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels

  conditions {
    display_name = "Messages published to ${local.unrouted_topic}"
    condition_threshold {
      filter = join(" AND ", [
        "metric.type=\"pubsub.googleapis.com/topic/send_message_operation_count\"",
        "resource.type=\"pubsub_topic\"",
        "resource.labels.topic_id=\"${google_pubsub_topic.relay[local.unrouted_topic].name}\"",
      ])
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      A verified delivery was published to the unrouted topic: either its event type matches no
      route (a new Gemini event type, or a routing table that misses one), or its body was not a
      JSON object with a string `type` (published as `relay.quarantined`).

      - Read the messages on the unrouted topic's subscription (`webhook-relay tail`) and look at
        their `type`.
      - New event type: add a route (variable routes) and apply, then run
        `webhook-relay redrive` on the unrouted subscription to re-publish them through the new
        table.
      - `relay.quarantined`: the body is in `data.body_base64`; report it, then acknowledge it.
    EOT
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: undelivered dead letters"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "Messages waiting in a dead-letter subscription"
    condition_threshold {
      filter = join(" AND ", [
        "metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\"",
        "resource.type=\"pubsub_subscription\"",
        "resource.labels.subscription_id=one_of(${join(",", [for id in local.dead_letter_subscription_ids : "\"${id}\""])})",
      ])
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "60s"
      # One series per subscription, so the incident names the dead-letter subscription.
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      A subscriber failed ${var.max_delivery_attempts} times on some messages, so Pub/Sub moved
      them to a dead-letter topic. They are kept (${var.message_retention_duration}) in its
      `-dead-letter-sub` subscription, named by this incident.

      - Find out why the consumer of the source subscription failed (its logs), and fix it.
      - Then run `webhook-relay redrive` on the dead-letter subscription: it re-publishes each
        message through the current routing table and acknowledges it only after the publish
        is confirmed.
    EOT
  }
}

resource "google_monitoring_alert_policy" "webhook_disabled" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: Gemini disabled the relay's webhook"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = local.alert_channels

  conditions {
    display_name = "reconcile found a webhook disabled after failed deliveries"
    condition_threshold {
      filter          = local.user_metric_filter["webhook_disabled"]
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      Gemini disabled a webhook registered for the relay (state
      disabled_due_to_failed_deliveries): it delivers nothing more until it is enabled again.
      reconcile keeps publishing the terminal job events it finds, after the grace period.

      - Find out why deliveries failed: the relay's 5xx alert, its logs, quotas.
      - Then enable the webhook again (`webhook-relay status` shows it), or let reconcile do it:
        variable reenable_webhooks = true.
    EOT
  }
}

resource "google_monitoring_alert_policy" "missed_events" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: job events Gemini never delivered"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels

  conditions {
    display_name = "reconcile published missed terminal events"
    condition_threshold {
      filter          = local.user_metric_filter["missed_event_reconciled"]
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      # One series per event type, so the incident names it.
      aggregations {
        alignment_period     = "3600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.type"]
      }
    }
  }

  alert_strategy {
    auto_close = "86400s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      reconcile published terminal job events that Gemini never delivered (signature
      `reconciled`), or job states Gemini has no event for (such as interaction.incomplete,
      video.failed). Subscribers got them; nothing is lost. Many of them mean deliveries are
      failing or the webhook does not cover these events.

      - The function's log lines with jsonPayload.status="missed_event_reconciled" name each job
        and event type.
      - Check the webhook's subscribed events and state (`webhook-relay status`), and the relay's
        401 and 5xx alerts.
    EOT
  }
}

resource "google_monitoring_alert_policy" "reconcile_failing" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: reconcile runs failing"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels

  conditions {
    display_name = "No completed reconcile run for 30 minutes"
    condition_absent {
      filter   = local.user_metric_filter["reconcile_runs"]
      duration = "1800s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  conditions {
    display_name = "reconcile answered 5xx"
    condition_threshold {
      filter = join(" AND ", [
        "metric.type=\"run.googleapis.com/request_count\"",
        local.reconcile_log_filter,
        "metric.labels.response_code_class=\"5xx\"",
      ])
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  alert_strategy {
    auto_close = "3600s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The safety net is not running: reconcile answered 5xx (503: it reached neither Firestore
      nor the Gemini API), or no run completed for 30 minutes (the scheduler job paused or
      failing, or the function not starting).

      - The first log line of a failed start names the bad variable; a missing or empty Gemini
        API key secret stops it too (add a version, see the README).
      - Cloud Scheduler's job ${var.name_prefix}-reconcile shows its last attempt and answer.
      - Runs that hit Gemini errors or 429s log them and retry on the next run.
    EOT
  }
}
