-- kneo-server: idempotency records, one row per (scope, key).
--
-- `value` is the record in kneo-server's versioned encoding: an in-flight
-- claim (PostgresStore) or a completed record (both modes). A row whose
-- `expires_at` has passed counts as absent; `PostgresStore::delete_expired`
-- removes such rows in batches. Safe to run more than once.
CREATE TABLE IF NOT EXISTS kneo_idempotency (
    scope      bytea       NOT NULL,
    key        text        NOT NULL,
    value      bytea       NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX IF NOT EXISTS kneo_idempotency_expires_at ON kneo_idempotency (expires_at);
