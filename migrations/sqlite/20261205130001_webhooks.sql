-- Status webhooks. A delivery remembers the API key (by name, so a rotated
-- key keeps its endpoints) that created it, and the caller's purpose; CLI
-- sends have neither and never raise events.
ALTER TABLE deliveries ADD COLUMN api_key_name TEXT;
ALTER TABLE deliveries ADD COLUMN purpose TEXT;

-- Where a key's events go. The secret is kept as given out (`whsec_…`):
-- tuma signs with it, so it cannot be hashed; it is never listed or logged.
CREATE TABLE webhook_endpoints (
    id              TEXT PRIMARY KEY,
    api_key_name    TEXT NOT NULL,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    -- The subscribed event types, as ",delivery.sent,delivery.failed,".
    events          TEXT NOT NULL,
    with_recipient  BOOLEAN NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    -- The first failure of the current run of failures (NULL after a 2xx).
    failing_since   TIMESTAMPTZ,
    disabled_at     TIMESTAMPTZ,
    disabled_reason TEXT
);
CREATE INDEX webhook_endpoints_key ON webhook_endpoints (api_key_name) WHERE disabled_at IS NULL;

-- One row per event per endpoint, written by the trigger below in the
-- transaction that changes the delivery's status. `payload` is fixed at the
-- first send, so every retry carries the same body under the same id.
CREATE TABLE webhook_events (
    id              TEXT PRIMARY KEY,
    endpoint_id     TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    delivery_id     TEXT,
    type            TEXT NOT NULL,
    sequence        BIGINT NOT NULL,
    payload         TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    finished_at     TIMESTAMPTZ
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_events_delivery ON webhook_events (delivery_id, sequence);

-- Every HTTP attempt at an event (and every `webhooks test`).
CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    started_at  TIMESTAMPTZ NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('delivered', 'rejected', 'error', 'refused')),
    status_code BIGINT,
    latency_ms  BIGINT NOT NULL,
    error       TEXT
);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id);

-- The event rows, in the statement that moves the delivery: whatever moves
-- a delivery to one of these statuses (dispatcher, receipts, sweeper,
-- cancel) raises its event in its own transaction. A delivery without a key
-- costs only the WHEN test.
CREATE TRIGGER deliveries_webhook_events AFTER UPDATE OF status ON deliveries
    FOR EACH ROW
    WHEN NEW.api_key_name IS NOT NULL AND OLD.status IS NOT NEW.status
         AND NEW.status IN ('sent', 'delivered', 'undelivered', 'failed', 'expired', 'canceled')
BEGIN
    INSERT INTO webhook_events (id, endpoint_id, delivery_id, type, sequence, created_at,
                                next_attempt_at, attempts, status)
    SELECT 'msg_' || lower(hex(randomblob(16))), e.id, NEW.id, 'delivery.' || NEW.status,
           COALESCE((SELECT MAX(w.sequence) FROM webhook_events w WHERE w.delivery_id = NEW.id), 0) + 1,
           NEW.updated_at, NEW.updated_at, 0, 'pending'
      FROM webhook_endpoints e
     WHERE e.api_key_name = NEW.api_key_name AND e.disabled_at IS NULL
       AND instr(e.events, ',delivery.' || NEW.status || ',') > 0;
END;
