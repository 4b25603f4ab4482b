resource "google_firestore_database" "relay" {
  count = var.create_firestore_database ? 1 : 0

  project     = var.project_id
  name        = var.firestore_database
  location_id = coalesce(var.firestore_location, var.region)
  type        = "FIRESTORE_NATIVE"
  # The database may outlive the relay (and hold other data): destroy leaves it in place.
  deletion_policy = "ABANDON"

  depends_on = [time_sleep.apis_enabled]
}

# Firestore deletes a delivery record after its expire_at (typically within 24 h). The field is
# only ever read by key, so its single-field indexes are disabled: they would cost writes and
# TTL deletes for nothing.
resource "google_firestore_field" "delivery_expiry" {
  project    = var.project_id
  database   = var.firestore_database
  collection = var.dedup_collection
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_firestore_database.relay]
}
