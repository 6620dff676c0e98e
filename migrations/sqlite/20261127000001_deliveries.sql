-- One message to one recipient. The OTP code lives in `otp_code` only while the
-- delivery can still be sent; every move to sent / failed / expired clears it.
CREATE TABLE deliveries (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('otp', 'notification')),
    channel             TEXT NOT NULL CHECK (channel IN ('sms', 'email')),
    recipient           TEXT NOT NULL,
    template            TEXT NOT NULL,
    locale              TEXT NOT NULL,
    vars                TEXT NOT NULL DEFAULT '{}',
    subject             TEXT,
    body                TEXT NOT NULL,
    body_html           TEXT,
    otp_code            TEXT,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'undelivered', 'failed', 'expired')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    next_attempt_at     TEXT,
    expires_at          TEXT,
    job_id              TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    sent_at             TEXT,
    provider            TEXT,
    provider_message_id TEXT,
    cost_micros         INTEGER,
    currency            TEXT,
    cost_is_estimate    BOOLEAN,
    segments            INTEGER,
    encoding            TEXT,
    last_error          TEXT
);

CREATE INDEX deliveries_status_next ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_created ON deliveries (created_at);
CREATE INDEX deliveries_job ON deliveries (job_id);

-- One row per provider call.
CREATE TABLE delivery_attempts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id         TEXT NOT NULL REFERENCES deliveries (id),
    attempt             INTEGER NOT NULL,
    provider            TEXT NOT NULL,
    started_at          TEXT NOT NULL,
    finished_at         TEXT,
    outcome             TEXT CHECK (outcome IN ('accepted', 'transient', 'permanent', 'unknown')),
    provider_message_id TEXT,
    provider_status     TEXT,
    error_code          TEXT,
    error               TEXT,
    cost_micros         INTEGER,
    currency            TEXT,
    cost_is_estimate    BOOLEAN,
    segments            INTEGER,
    latency_ms          INTEGER,
    UNIQUE (delivery_id, attempt)
);

-- The old app's tables, as views, so its dashboards keep working.
CREATE VIEW email_delivery_log AS
SELECT
    id,
    recipient AS to_email,
    subject,
    template,
    CASE status
        WHEN 'pending' THEN 'pending' WHEN 'sending' THEN 'pending'
        WHEN 'sent' THEN 'sent' WHEN 'delivered' THEN 'sent'
        ELSE 'failed'
    END AS status,
    provider,
    provider_message_id,
    last_error AS error_message,
    sent_at,
    created_at
FROM deliveries
WHERE channel = 'email';

CREATE VIEW sms_delivery_log AS
SELECT
    id,
    recipient AS to_phone,
    body AS message,
    template,
    CASE status
        WHEN 'pending' THEN 'pending' WHEN 'sending' THEN 'pending'
        WHEN 'sent' THEN 'sent' WHEN 'delivered' THEN 'sent'
        ELSE 'failed'
    END AS status,
    provider,
    provider_message_id,
    cost_micros / 1000000.0 AS cost,
    last_error AS error_message,
    sent_at,
    created_at
FROM deliveries
WHERE channel = 'sms';
