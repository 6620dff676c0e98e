-- The spend guard. `budget_usage` is one counter row per budget (currency and
-- period) and period start: what was spent (actual cost where known, else the
-- estimate) and what is reserved by sends in flight. A send reserves its
-- estimate with a guarded UPDATE of that row, so two workers never both take
-- the last of a budget. `budget_reservations` says which delivery holds which
-- reservation, so it becomes the real cost (or is released) exactly once.
CREATE TABLE budget_usage (
    currency        TEXT NOT NULL,
    period          TEXT NOT NULL CHECK (period IN ('day', 'month')),
    period_start    TIMESTAMPTZ NOT NULL,
    spent_micros    BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    -- How many of the budget's alert_at thresholds were logged this period.
    alerts_logged   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (currency, period, period_start)
);

CREATE TABLE budget_reservations (
    delivery_id  TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    currency     TEXT NOT NULL,
    period       TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    micros       BIGINT NOT NULL,
    -- When it was made: one left behind by a lost process is settled by the sweeper.
    reserved_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (delivery_id, currency, period)
);

-- Which budget holds a `held` delivery (`KES/month`), and when ops released
-- it past its budget (it is then sent without waiting for the period).
ALTER TABLE deliveries ADD COLUMN held_budget TEXT;
ALTER TABLE deliveries ADD COLUMN budget_released_at TIMESTAMPTZ;
CREATE INDEX deliveries_held ON deliveries (status, held_budget) WHERE status = 'held';

-- Recipients not worth paying for: a permanent failure said the number or
-- address does not exist, is blacklisted or unsubscribed. Sends to them are
-- refused at intake until ops lift it or it expires (numbers are recycled).
CREATE TABLE suppressions (
    channel     TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    provider    TEXT NOT NULL,
    error_code  TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, recipient)
);
CREATE INDEX suppressions_created ON suppressions (created_at);

-- The SMS-pumping guards count a country's or a range's recent OTPs.
CREATE INDEX deliveries_otp_created ON deliveries (created_at, recipient) WHERE kind = 'otp';

-- The old app's views: a held delivery is still to be sent, so `pending`
-- (never `failed`).
DROP VIEW email_delivery_log;
DROP VIEW sms_delivery_log;
CREATE VIEW email_delivery_log AS
SELECT
    id,
    recipient AS to_email,
    subject,
    template,
    CASE status
        WHEN 'pending' THEN 'pending' WHEN 'sending' THEN 'pending'
        WHEN 'held' THEN 'pending'
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
        WHEN 'held' THEN 'pending'
        WHEN 'sent' THEN 'sent' WHEN 'delivered' THEN 'sent'
        ELSE 'failed'
    END AS status,
    provider,
    provider_message_id,
    cost_micros::numeric / 1000000 AS cost,
    last_error AS error_message,
    sent_at,
    created_at
FROM deliveries
WHERE channel = 'sms';
