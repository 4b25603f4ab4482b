# Monitoring refuses an alert on a log-based metric until the metric has propagated ("Cannot
# find metric(s)", hashicorp/terraform-provider-google#11102), which can take up to 10 minutes
# after the metric is created. The metrics name the functions by their known names (not by the
# function resources), so they are created in the first minutes of an apply and this wait runs
# beside the functions' builds: a first apply takes about 13 minutes, most of it this wait.
resource "time_sleep" "metrics_propagate" {
  create_duration = "600s"
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

  # Every alert policy: its conditions (threshold, or absent) and the documentation it carries.
  alert_policies = {
    unauthorized_surge = {
      display_name = "${var.name_prefix}: surge of 401 answers"
      severity     = "WARNING"
      auto_close   = "3600s"
      conditions = [
        {
          display_name     = "More than ${var.unauthorized_alert_threshold} deliveries refused in 5 minutes"
          absent           = false
          filter           = local.user_metric_filter["unauthorized"]
          threshold        = var.unauthorized_alert_threshold
          duration         = "0s"
          alignment_period = "300s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
      ]
      documentation = <<-EOT
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
    unavailable = {
      display_name = "${var.name_prefix}: deliveries answered 503 or 5xx"
      severity     = "ERROR"
      auto_close   = "3600s"
      conditions = [
        {
          display_name     = "The relay answered 503 (Firestore, Pub/Sub or key set unavailable)"
          absent           = false
          filter           = local.user_metric_filter["unavailable"]
          threshold        = 0
          duration         = "0s"
          alignment_period = "60s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
        # Catches what the relay cannot log itself: an instance that fails to start (bad
        # configuration), crashes or times out.
        {
          display_name     = "Cloud Run answered 5xx"
          absent           = false
          filter           = join(" AND ", ["metric.type=\"run.googleapis.com/request_count\"", local.request_log_filter, "metric.labels.response_code_class=\"5xx\""])
          threshold        = 0
          duration         = "0s"
          alignment_period = "60s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
      ]
      documentation = <<-EOT
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
    unrouted = {
      display_name = "${var.name_prefix}: events on the unrouted topic"
      severity     = "WARNING"
      auto_close   = "3600s"
      conditions = [
        {
          display_name     = "Messages published to ${local.unrouted_topic}"
          absent           = false
          filter           = join(" AND ", ["metric.type=\"pubsub.googleapis.com/topic/send_message_operation_count\"", "resource.type=\"pubsub_topic\"", "resource.labels.topic_id=\"${google_pubsub_topic.relay[local.unrouted_topic].name}\""])
          threshold        = 0
          duration         = "0s"
          alignment_period = "300s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
      ]
      documentation = <<-EOT
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
    dead_letters = {
      display_name = "${var.name_prefix}: undelivered dead letters"
      severity     = "ERROR"
      auto_close   = "86400s"
      conditions = [
        # One series per subscription, so the incident names the dead-letter subscription.
        {
          display_name     = "Messages waiting in a dead-letter subscription"
          absent           = false
          filter           = join(" AND ", ["metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\"", "resource.type=\"pubsub_subscription\"", "resource.labels.subscription_id=one_of(${join(",", [for id in local.dead_letter_subscription_ids : "\"${id}\""])})"])
          threshold        = 0
          duration         = "60s"
          alignment_period = "60s"
          aligner          = "ALIGN_MAX"
          reducer          = null
          group_by         = []
        },
      ]
      documentation = <<-EOT
        A subscriber failed ${var.max_delivery_attempts} times on some messages, so Pub/Sub moved
        them to a dead-letter topic. They are kept (${var.message_retention_duration}) in its
        `-dead-letter-sub` subscription, named by this incident.

        - Find out why the consumer of the source subscription failed (its logs), and fix it.
        - Then run `webhook-relay redrive` on the dead-letter subscription: it re-publishes each
          message through the current routing table and acknowledges it only after the publish
          is confirmed.
      EOT
    }
    webhook_disabled = {
      display_name = "${var.name_prefix}: Gemini disabled the relay's webhook"
      severity     = "CRITICAL"
      auto_close   = "3600s"
      conditions = [
        {
          display_name     = "reconcile found a webhook disabled after failed deliveries"
          absent           = false
          filter           = local.user_metric_filter["webhook_disabled"]
          threshold        = 0
          duration         = "0s"
          alignment_period = "600s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
      ]
      documentation = <<-EOT
        Gemini disabled a webhook registered for the relay (state
        disabled_due_to_failed_deliveries): it delivers nothing more until it is enabled again.
        reconcile keeps publishing the terminal job events it finds, after the grace period.

        - Find out why deliveries failed: the relay's 5xx alert, its logs, quotas.
        - Then enable the webhook again (`webhook-relay status` shows it), or let reconcile do it:
          variable reenable_webhooks = true.
      EOT
    }
    missed_events = {
      display_name = "${var.name_prefix}: job events Gemini never delivered"
      severity     = "WARNING"
      auto_close   = "86400s"
      conditions = [
        # One series per event type, so the incident names it.
        {
          display_name     = "reconcile published missed terminal events"
          absent           = false
          filter           = local.user_metric_filter["missed_event_reconciled"]
          threshold        = 0
          duration         = "0s"
          alignment_period = "3600s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = ["metric.label.type"]
        },
      ]
      documentation = <<-EOT
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
    reconcile_failing = {
      display_name = "${var.name_prefix}: reconcile runs failing"
      severity     = "ERROR"
      auto_close   = "3600s"
      conditions = [
        # Cannot fire for a series that never existed (a first deployment whose runs never
        # completed): the scheduler condition below covers calls that never reach the function.
        {
          display_name     = "No completed reconcile run for 30 minutes"
          absent           = true
          filter           = local.user_metric_filter["reconcile_runs"]
          threshold        = null
          duration         = "1800s"
          alignment_period = "600s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
        {
          display_name     = "reconcile answered 5xx"
          absent           = false
          filter           = join(" AND ", ["metric.type=\"run.googleapis.com/request_count\"", local.reconcile_log_filter, "metric.labels.response_code_class=\"5xx\""])
          threshold        = 0
          duration         = "0s"
          alignment_period = "600s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
        # OIDC refused by Cloud Run before the function runs leaves no 5xx of ours and no log line
        # of reconcile: only the job's own log (an ERROR entry per failed attempt) shows it.
        {
          display_name     = "Cloud Scheduler could not run reconcile"
          absent           = false
          filter           = join(" AND ", ["metric.type=\"logging.googleapis.com/log_entry_count\"", "resource.type=\"cloud_scheduler_job\"", "resource.labels.job_id=\"${google_cloud_scheduler_job.reconcile.name}\"", "metric.labels.severity=\"ERROR\""])
          threshold        = 0
          duration         = "0s"
          alignment_period = "600s"
          aligner          = "ALIGN_SUM"
          reducer          = "REDUCE_SUM"
          group_by         = []
        },
      ]
      documentation = <<-EOT
        The safety net is not running: reconcile answered 5xx (503: it reached neither Firestore
        nor the Gemini API, or it has no Gemini API key), no run completed for 30 minutes (the
        scheduler job paused or failing, or the function not starting), or Cloud Scheduler's calls
        never reached it (the job logged an error: OIDC refused, wrong audience, no invoker role).

        - Without a key each run answers 503 with an ERROR line naming GEMINI_API_KEY: add a
          version to the API key secret (see the README). Otherwise the first log line of a failed
          start names the bad variable.
        - Cloud Scheduler's job ${var.name_prefix}-reconcile shows its last attempt and answer.
        - Runs that hit Gemini errors or 429s log them and retry on the next run.
      EOT
    }
  }
}

resource "google_monitoring_alert_policy" "relay" {
  for_each = local.alert_policies

  project               = var.project_id
  display_name          = each.value.display_name
  combiner              = "OR"
  severity              = each.value.severity
  notification_channels = local.alert_channels

  dynamic "conditions" {
    for_each = each.value.conditions
    content {
      display_name = conditions.value.display_name

      dynamic "condition_threshold" {
        for_each = conditions.value.absent ? [] : [conditions.value]
        content {
          filter          = condition_threshold.value.filter
          comparison      = "COMPARISON_GT"
          threshold_value = condition_threshold.value.threshold
          duration        = condition_threshold.value.duration
          aggregations {
            alignment_period     = condition_threshold.value.alignment_period
            per_series_aligner   = condition_threshold.value.aligner
            cross_series_reducer = condition_threshold.value.reducer
            group_by_fields      = condition_threshold.value.group_by
          }
        }
      }

      dynamic "condition_absent" {
        for_each = conditions.value.absent ? [conditions.value] : []
        content {
          filter   = condition_absent.value.filter
          duration = condition_absent.value.duration
          aggregations {
            alignment_period     = condition_absent.value.alignment_period
            per_series_aligner   = condition_absent.value.aligner
            cross_series_reducer = condition_absent.value.reducer
          }
        }
      }
    }
  }

  alert_strategy {
    auto_close = each.value.auto_close
  }

  documentation {
    mime_type = "text/markdown"
    content   = each.value.documentation
  }
}

# The policies were separate resources: existing deployments keep theirs.
moved {
  from = google_monitoring_alert_policy.unauthorized_surge
  to   = google_monitoring_alert_policy.relay["unauthorized_surge"]
}

moved {
  from = google_monitoring_alert_policy.unavailable
  to   = google_monitoring_alert_policy.relay["unavailable"]
}

moved {
  from = google_monitoring_alert_policy.unrouted
  to   = google_monitoring_alert_policy.relay["unrouted"]
}

moved {
  from = google_monitoring_alert_policy.dead_letters
  to   = google_monitoring_alert_policy.relay["dead_letters"]
}

moved {
  from = google_monitoring_alert_policy.webhook_disabled
  to   = google_monitoring_alert_policy.relay["webhook_disabled"]
}

moved {
  from = google_monitoring_alert_policy.missed_events
  to   = google_monitoring_alert_policy.relay["missed_events"]
}

moved {
  from = google_monitoring_alert_policy.reconcile_failing
  to   = google_monitoring_alert_policy.relay["reconcile_failing"]
}
