-- When a receipt said the message arrived.
ALTER TABLE deliveries ADD COLUMN delivered_at TEXT;

-- Receipts find their attempt by the provider's message id.
CREATE INDEX delivery_attempts_provider_message ON delivery_attempts (provider, provider_message_id);

-- One row per delivery receipt (status callback or delivery report), kept
-- whether or not it moved the delivery: the provider's fields as sent (no
-- header, signature or URL secret), and what tuma made of them.
CREATE TABLE receipts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id         TEXT NOT NULL REFERENCES deliveries (id),
    attempt             INTEGER NOT NULL,
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    error_code          TEXT,
    error               TEXT,
    applied             BOOLEAN NOT NULL,
    fields              TEXT NOT NULL,
    received_at         TEXT NOT NULL
);

CREATE INDEX receipts_delivery ON receipts (delivery_id, received_at);

-- Price reconciliation: when the actual price was recorded or the fetch given
-- up (and why); NULL while a Twilio delivery still waits for its price.
ALTER TABLE deliveries ADD COLUMN reconciled_at TEXT;
ALTER TABLE deliveries ADD COLUMN reconcile_note TEXT;
CREATE INDEX deliveries_unpriced ON deliveries (provider, sent_at) WHERE reconciled_at IS NULL;
