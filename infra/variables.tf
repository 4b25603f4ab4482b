variable "project_id" {
  description = "Google Cloud project that hosts the relay, its topics and its Firestore database."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits, hyphens), not a name or number."
  }
}

variable "region" {
  description = "Region of the function and its source bucket, e.g. europe-west1."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Cloud Functions region such as us-central1."
  }
}

variable "name_prefix" {
  description = "Name of the function and prefix of its service account, bucket, secret and metrics."
  type        = string
  default     = "gemini-webhook-relay"

  validation {
    # 20 characters keep every derived name (service account ids: 30) within its limit, and
    # "<name>-<project number>" within the 63 characters Cloud Run's deterministic URL needs
    # (checked exactly, with the project number, by a precondition in function.tf).
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-20 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "topic_prefix" {
  description = "Prefix of the default topics (RELAY_TOPIC_PREFIX): <prefix>batch, <prefix>interaction, <prefix>video, <prefix>unrouted."
  type        = string
  default     = "gemini-"

  validation {
    condition     = can(regex("^([A-Za-z][A-Za-z0-9._~+%-]*)?$", var.topic_prefix)) && !startswith(lower(var.topic_prefix), "goog")
    error_message = "topic_prefix must start a valid Pub/Sub topic id (a letter first, not \"goog\")."
  }
}

variable "routes" {
  description = "RELAY_ROUTES: event-type pattern (exact type, \"prefix.*\" or \"*\") to topic id. null keeps the code's default table. Every distinct topic gets a subscription and a dead-letter topic."
  type        = map(string)
  default     = null

  validation {
    condition = var.routes == null ? true : length(var.routes) > 0 && alltrue([
      for pattern, topic in var.routes :
      can(regex("^(\\*|[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*(\\.\\*)?)$", pattern)) &&
      can(regex("^[A-Za-z][A-Za-z0-9._~+%-]{2,200}$", topic)) &&
      !startswith(lower(topic), "goog")
    ])
    error_message = "routes must be a non-empty map of patterns (event type, \"prefix.*\" or \"*\") to valid topic ids of at most 201 characters (room for the \"-dead-letter\" suffix)."
  }
}

variable "memory" {
  description = "Memory of each instance (Cloud Functions notation, e.g. 512Mi, 1Gi)."
  type        = string
  default     = "512Mi"

  validation {
    condition     = can(regex("^[0-9]+(M|Mi|G|Gi)$", var.memory))
    error_message = "memory must be a number followed by M, Mi, G or Gi."
  }
}

variable "max_instances" {
  description = "Upper bound on instances. Gemini retries for 24 h, so a cap only delays deliveries (429s are retried)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000 && floor(var.max_instances) == var.max_instances
    error_message = "max_instances must be a whole number from 1 to 1000."
  }
}

variable "min_instances" {
  description = "Instances kept warm. 0 is cheapest; 1 avoids a cold start on the first delivery after idle."
  type        = number
  default     = 0

  validation {
    condition     = var.min_instances >= 0 && floor(var.min_instances) == var.min_instances
    error_message = "min_instances must be a whole number, 0 or more."
  }
}

variable "concurrency" {
  description = "Requests one instance serves at once. The handler mostly waits on Firestore and Pub/Sub, so one CPU serves many."
  type        = number
  default     = 40

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000 && floor(var.concurrency) == var.concurrency
    error_message = "concurrency must be a whole number from 1 to 1000."
  }
}

variable "jwt_audiences" {
  description = "GEMINI_JWT_AUDIENCE: accepted `aud` values of JWT-signed (per-request) deliveries, typically the function_url output (known before the first apply). Empty: such deliveries get 401 (opt-in)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for audience in var.jwt_audiences : audience != "" && !strcontains(audience, ",")])
    error_message = "jwt_audiences entries must be non-empty and contain no comma (they are joined with commas)."
  }
}

variable "jwt_issuers" {
  description = "GEMINI_JWT_ISSUERS: if non-empty, the accepted `iss` values of JWT-signed deliveries."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for issuer in var.jwt_issuers : issuer != "" && !strcontains(issuer, ",")])
    error_message = "jwt_issuers entries must be non-empty and contain no comma (they are joined with commas)."
  }
}

variable "build_service_account" {
  description = "Service account Cloud Build builds the functions as (projects/<project>/serviceAccounts/<email>), holding at least the Logs Writer and Artifact Registry Writer roles and read access to the source bucket. null: a dedicated one is created with exactly those."
  type        = string
  default     = null

  validation {
    condition     = var.build_service_account == null ? true : can(regex("^projects/[^/]+/serviceAccounts/[^/@]+@[^/]+$", var.build_service_account))
    error_message = "build_service_account must be projects/<project>/serviceAccounts/<email>, or null."
  }
}

variable "firestore_database" {
  description = "Firestore database holding the delivery records."
  type        = string
  default     = "(default)"

  validation {
    # The contract has no variable that points the code at another database.
    condition     = var.firestore_database == "(default)"
    error_message = "The relay's code uses the (default) database; another database needs a configuration variable in the code first."
  }
}

variable "create_firestore_database" {
  description = "Create the Firestore database (native mode). Set to false when the project already has it."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Location of a database created here (e.g. nam5, eur3, europe-west1). null: the function's region."
  type        = string
  default     = null
}

variable "dedup_collection" {
  description = "RELAY_DEDUP_COLLECTION: Firestore collection of delivery records; its expire_at field gets the TTL policy."
  type        = string
  default     = "webhook_deliveries"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,100}$", var.dedup_collection)) && !startswith(var.dedup_collection, "__")
    error_message = "dedup_collection must be a plain Firestore collection id."
  }
}

variable "dedup_ttl_hours" {
  description = "RELAY_DEDUP_TTL_HOURS: how long a delivery record is kept. Must exceed Gemini's 24 h of retries."
  type        = number
  default     = 72

  validation {
    condition     = var.dedup_ttl_hours >= 25 && var.dedup_ttl_hours <= 8760 && floor(var.dedup_ttl_hours) == var.dedup_ttl_hours
    error_message = "dedup_ttl_hours must be a whole number from 25 to 8760."
  }
}

variable "claim_lease_seconds" {
  description = "RELAY_CLAIM_LEASE_SECONDS: how long a claim blocks a concurrent duplicate before it may be taken over."
  type        = number
  default     = 30

  validation {
    condition     = var.claim_lease_seconds >= 1 && var.claim_lease_seconds <= 3600 && floor(var.claim_lease_seconds) == var.claim_lease_seconds
    error_message = "claim_lease_seconds must be a whole number from 1 to 3600."
  }
}

variable "message_retention_duration" {
  description = "How long topics and subscriptions keep messages, acknowledged ones included, so a late subscriber can seek back."
  type        = string
  default     = "604800s"

  validation {
    condition     = can(regex("^[0-9]+s$", var.message_retention_duration))
    error_message = "message_retention_duration must be a number of seconds such as \"604800s\"."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of a message to a subscriber before it moves to the dead-letter topic."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100 && floor(var.max_delivery_attempts) == var.max_delivery_attempts
    error_message = "max_delivery_attempts must be a whole number from 5 to 100 (Pub/Sub's limits)."
  }
}

variable "alert_email" {
  description = "Address that receives the alerts. null: no email channel is created."
  type        = string
  default     = null

  validation {
    condition     = var.alert_email == null ? true : can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alert_email))
    error_message = "alert_email must be an email address or null."
  }
}

variable "notification_channels" {
  description = "Existing notification channel ids (projects/<project>/notificationChannels/<id>) that also receive the alerts."
  type        = list(string)
  default     = []
}

variable "unauthorized_alert_threshold" {
  description = "401 answers within 5 minutes above which the unauthorized-surge alert opens."
  type        = number
  default     = 20

  validation {
    condition     = var.unauthorized_alert_threshold >= 0
    error_message = "unauthorized_alert_threshold must not be negative."
  }
}

variable "enable_apis" {
  description = "Enable the Google APIs the relay needs. Set to false when the project's APIs are managed elsewhere."
  type        = bool
  default     = true
}

variable "reconcile_schedule" {
  description = "When Cloud Scheduler runs reconcile (cron, UTC). A missing event is published within the grace period plus one interval."
  type        = string
  default     = "*/10 * * * *"

  validation {
    condition     = length(split(" ", trimspace(var.reconcile_schedule))) == 5
    error_message = "reconcile_schedule must be a cron expression of five fields, e.g. \"*/10 * * * *\"."
  }
}

variable "jobs_collection" {
  description = "RELAY_JOBS_COLLECTION: Firestore collection of job records (watch list, one terminal event per job); its expire_at field gets the TTL policy."
  type        = string
  default     = "gemini_jobs"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,100}$", var.jobs_collection)) && !startswith(var.jobs_collection, "__")
    error_message = "jobs_collection must be a plain Firestore collection id."
  }
}

variable "public_url" {
  description = "The URL Gemini delivers to (RELAY_PUBLIC_URL, and the function_url output): a custom domain, or the URL an existing deployment registered. null: the function's deterministic Cloud Run URL, https://<name_prefix>-<project number>.<region>.run.app."
  type        = string
  default     = null

  validation {
    condition     = var.public_url == null ? true : can(regex("^https://[^/?#\\s]+(/[^?#\\s]*)?$", var.public_url))
    error_message = "public_url must be an https URL without query or fragment, or null."
  }
}

variable "relay_public_url" {
  description = "Deprecated name of public_url, still honoured when public_url is null."
  type        = string
  default     = null

  validation {
    condition     = var.relay_public_url == null ? true : startswith(var.relay_public_url, "https://")
    error_message = "relay_public_url must be an https URL, or null."
  }
}

variable "reconcile_grace_seconds" {
  description = "RELAY_RECONCILE_GRACE_SECONDS: how long after a job's terminal state a missing event is synthesized."
  type        = number
  default     = 900

  validation {
    condition     = var.reconcile_grace_seconds >= 0 && var.reconcile_grace_seconds <= 604800 && floor(var.reconcile_grace_seconds) == var.reconcile_grace_seconds
    error_message = "reconcile_grace_seconds must be a whole number from 0 to 604800."
  }
}

variable "reconcile_lookback_hours" {
  description = "RELAY_RECONCILE_LOOKBACK_HOURS: how far back batch jobs are checked."
  type        = number
  default     = 72

  validation {
    condition     = var.reconcile_lookback_hours >= 1 && var.reconcile_lookback_hours <= 720 && floor(var.reconcile_lookback_hours) == var.reconcile_lookback_hours
    error_message = "reconcile_lookback_hours must be a whole number from 1 to 720."
  }
}

variable "reenable_webhooks" {
  description = "RELAY_REENABLE_WEBHOOKS: let reconcile re-enable a webhook Gemini disabled after failed deliveries."
  type        = bool
  default     = false
}

variable "dynamic_webhooks" {
  description = "GEMINI_DYNAMIC_WEBHOOKS: accept per-request (dynamic) deliveries signed v1a with an Ed25519 key of Gemini's key set. Off: anyone can name the URL in a job's webhook_config."
  type        = bool
  default     = false
}

variable "public_access" {
  description = "How the receiver is made public. \"no_invoker_iam_check\": the Cloud Run invoker IAM check is disabled on its service (works under domain-restricted sharing; needs gcloud where Terraform runs). \"all_users\": roles/run.invoker for allUsers (refused under domain-restricted sharing)."
  type        = string
  default     = "no_invoker_iam_check"

  validation {
    condition     = contains(["no_invoker_iam_check", "all_users"], var.public_access)
    error_message = "public_access must be \"no_invoker_iam_check\" or \"all_users\"."
  }
}

variable "scheduler_region" {
  description = "Region of reconcile's Cloud Scheduler job. null: region. Cloud Scheduler is not offered in every region that has Cloud Run functions."
  type        = string
  default     = null

  validation {
    condition     = var.scheduler_region == null ? true : can(regex("^[a-z]+-[a-z]+[0-9]+$", var.scheduler_region))
    error_message = "scheduler_region must be a region such as us-central1, or null."
  }
}

variable "exactly_once_delivery" {
  description = "Pub/Sub exactly-once delivery on the relay's subscriptions (the <topic>-sub ones and filtered_subscriptions). Guaranteed only within one region, at a higher delivery latency."
  type        = bool
  default     = true
}

variable "filtered_subscriptions" {
  description = "Extra subscriptions, by subscription id, each on one of the relay's topics with a Pub/Sub filter (e.g. attributes.um_team = \"search\"). A filter cannot change in place: changing it replaces the subscription and drops its backlog."
  type = map(object({
    topic                = string
    filter               = string
    ack_deadline_seconds = optional(number, 60)
  }))
  default = {}

  validation {
    condition = alltrue([
      for id, subscription in var.filtered_subscriptions :
      can(regex("^[A-Za-z][A-Za-z0-9._~+%-]{2,254}$", id)) && !startswith(lower(id), "goog") &&
      trimspace(subscription.filter) != "" && length(subscription.filter) <= 256 &&
      subscription.ack_deadline_seconds >= 10 && subscription.ack_deadline_seconds <= 600
    ])
    error_message = "filtered_subscriptions: ids must be valid subscription ids, filters non-empty (at most 256 characters), ack_deadline_seconds from 10 to 600."
  }
}
