-- Per-day cost rollups: what the cost report adds up, kept per UTC day,
-- channel, provider, country, template and currency, so a month of costs
-- reads a few hundred rows rather than every delivery. Triggers on
-- `deliveries` keep them in the transaction of every change (intake,
-- dispatcher, receipts, reconciliation, sweeper, cancel, replay), as the
-- webhook events are kept. `tuma report costs` still reads the deliveries
-- themselves; tests compare the two.

-- The recipient's country (ISO code; '' when the number belongs to none),
-- derived from the number when the delivery is recorded; NULL for email.
-- Rows recorded before this column are given theirs when tuma starts.
ALTER TABLE deliveries ADD COLUMN country TEXT;
CREATE INDEX deliveries_country_unset ON deliveries (recipient) WHERE channel = 'sms' AND country IS NULL;

-- `sent` deliveries by send time: the few still awaiting their receipt.
CREATE INDEX deliveries_sent_awaiting ON deliveries (sent_at) WHERE status = 'sent';

CREATE TABLE cost_rollups (
    -- The UTC day the deliveries were accepted on (`created_at`).
    day              TEXT NOT NULL,
    channel          TEXT NOT NULL,
    -- The latest attempt's provider; '' for none yet.
    provider         TEXT NOT NULL,
    -- SMS: the recipient's ISO country code, '' when it belongs to none;
    -- email: ''.
    country          TEXT NOT NULL,
    template         TEXT NOT NULL,
    -- The currency of the costs; '' for deliveries without a cost.
    currency         TEXT NOT NULL,
    -- Every delivery, whatever its status (a group exists once one does).
    deliveries       BIGINT NOT NULL DEFAULT 0,
    -- Reached a provider: sent, delivered, undelivered, or failed with a cost.
    messages         BIGINT NOT NULL DEFAULT 0,
    -- The segments of those messages.
    segments         BIGINT NOT NULL DEFAULT 0,
    delivered        BIGINT NOT NULL DEFAULT 0,
    undelivered      BIGINT NOT NULL DEFAULT 0,
    failed           BIGINT NOT NULL DEFAULT 0,
    expired          BIGINT NOT NULL DEFAULT 0,
    -- Status `sent` (split into "no receipt" and "awaiting" when read: that
    -- depends on the time of reading).
    sent             BIGINT NOT NULL DEFAULT 0,
    -- The provider's own costs and the price table's estimates, micro-units.
    actual_micros    BIGINT NOT NULL DEFAULT 0,
    estimated_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, channel, provider, country, template, currency)
);

-- The rollups of the deliveries already stored.
INSERT INTO cost_rollups (day, channel, provider, country, template, currency, deliveries, messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, estimated_micros)
SELECT day, channel, provider, country, template, currency, SUM(deliveries), SUM(messages), SUM(segments), SUM(delivered), SUM(undelivered), SUM(failed), SUM(expired), SUM(sent), SUM(actual_micros), SUM(estimated_micros)
  FROM (SELECT substr(d.created_at, 1, 10) AS day,
         d.channel AS channel,
         COALESCE(d.provider, '') AS provider,
         CASE WHEN d.channel = 'sms' THEN COALESCE(d.country, '') ELSE '' END AS country,
         d.template AS template,
         CASE WHEN d.cost_micros IS NOT NULL AND d.currency IS NOT NULL THEN d.currency ELSE '' END AS currency,
         1 AS deliveries,
         CASE WHEN (d.status IN ('sent', 'delivered', 'undelivered') OR (d.status = 'failed' AND d.cost_micros IS NOT NULL AND d.currency IS NOT NULL)) THEN 1 ELSE 0 END AS messages,
         CASE WHEN (d.status IN ('sent', 'delivered', 'undelivered') OR (d.status = 'failed' AND d.cost_micros IS NOT NULL AND d.currency IS NOT NULL)) THEN COALESCE(d.segments, 0) ELSE 0 END AS segments,
         CASE WHEN d.status = 'delivered' THEN 1 ELSE 0 END AS delivered,
         CASE WHEN d.status = 'undelivered' THEN 1 ELSE 0 END AS undelivered,
         CASE WHEN d.status = 'failed' THEN 1 ELSE 0 END AS failed,
         CASE WHEN d.status = 'expired' THEN 1 ELSE 0 END AS expired,
         CASE WHEN d.status = 'sent' THEN 1 ELSE 0 END AS sent,
         CASE WHEN d.cost_micros IS NOT NULL AND d.currency IS NOT NULL AND NOT (COALESCE(d.cost_is_estimate, 0) <> 0) THEN d.cost_micros ELSE 0 END AS actual_micros,
         CASE WHEN d.cost_micros IS NOT NULL AND d.currency IS NOT NULL AND COALESCE(d.cost_is_estimate, 0) <> 0 THEN d.cost_micros ELSE 0 END AS estimated_micros
          FROM deliveries d) p
 GROUP BY day, channel, provider, country, template, currency;

CREATE TRIGGER deliveries_cost_rollups_insert AFTER INSERT ON deliveries
    FOR EACH ROW
BEGIN
    INSERT INTO cost_rollups (day, channel, provider, country, template, currency, deliveries, messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, estimated_micros)
    SELECT day, channel, provider, country, template, currency, SUM(deliveries), SUM(messages), SUM(segments), SUM(delivered), SUM(undelivered), SUM(failed), SUM(expired), SUM(sent), SUM(actual_micros), SUM(estimated_micros)
      FROM (SELECT substr(NEW.created_at, 1, 10) AS day,
                   NEW.channel AS channel,
                   COALESCE(NEW.provider, '') AS provider,
                   CASE WHEN NEW.channel = 'sms' THEN COALESCE(NEW.country, '') ELSE '' END AS country,
                   NEW.template AS template,
                   CASE WHEN NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL THEN NEW.currency ELSE '' END AS currency,
                   1 AS deliveries,
                   CASE WHEN (NEW.status IN ('sent', 'delivered', 'undelivered') OR (NEW.status = 'failed' AND NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL)) THEN 1 ELSE 0 END AS messages,
                   CASE WHEN (NEW.status IN ('sent', 'delivered', 'undelivered') OR (NEW.status = 'failed' AND NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL)) THEN COALESCE(NEW.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN NEW.status = 'delivered' THEN 1 ELSE 0 END AS delivered,
                   CASE WHEN NEW.status = 'undelivered' THEN 1 ELSE 0 END AS undelivered,
                   CASE WHEN NEW.status = 'failed' THEN 1 ELSE 0 END AS failed,
                   CASE WHEN NEW.status = 'expired' THEN 1 ELSE 0 END AS expired,
                   CASE WHEN NEW.status = 'sent' THEN 1 ELSE 0 END AS sent,
                   CASE WHEN NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL AND NOT (COALESCE(NEW.cost_is_estimate, 0) <> 0) THEN NEW.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL AND COALESCE(NEW.cost_is_estimate, 0) <> 0 THEN NEW.cost_micros ELSE 0 END AS estimated_micros) p
     GROUP BY day, channel, provider, country, template, currency
    ON CONFLICT (day, channel, provider, country, template, currency) DO UPDATE SET
        deliveries = cost_rollups.deliveries + excluded.deliveries,
        messages = cost_rollups.messages + excluded.messages,
        segments = cost_rollups.segments + excluded.segments,
        delivered = cost_rollups.delivered + excluded.delivered,
        undelivered = cost_rollups.undelivered + excluded.undelivered,
        failed = cost_rollups.failed + excluded.failed,
        expired = cost_rollups.expired + excluded.expired,
        sent = cost_rollups.sent + excluded.sent,
        actual_micros = cost_rollups.actual_micros + excluded.actual_micros,
        estimated_micros = cost_rollups.estimated_micros + excluded.estimated_micros;
END;

CREATE TRIGGER deliveries_cost_rollups_update AFTER UPDATE OF status, provider, cost_micros, currency, cost_is_estimate, segments, created_at, channel, template, country ON deliveries
    FOR EACH ROW
    WHEN OLD.status IS NOT NEW.status
         OR OLD.provider IS NOT NEW.provider
         OR OLD.cost_micros IS NOT NEW.cost_micros
         OR OLD.currency IS NOT NEW.currency
         OR OLD.cost_is_estimate IS NOT NEW.cost_is_estimate
         OR OLD.segments IS NOT NEW.segments
         OR OLD.created_at IS NOT NEW.created_at
         OR OLD.channel IS NOT NEW.channel
         OR OLD.template IS NOT NEW.template
         OR OLD.country IS NOT NEW.country
BEGIN
    INSERT INTO cost_rollups (day, channel, provider, country, template, currency, deliveries, messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, estimated_micros)
    SELECT day, channel, provider, country, template, currency, SUM(deliveries), SUM(messages), SUM(segments), SUM(delivered), SUM(undelivered), SUM(failed), SUM(expired), SUM(sent), SUM(actual_micros), SUM(estimated_micros)
      FROM (SELECT substr(OLD.created_at, 1, 10) AS day,
                   OLD.channel AS channel,
                   COALESCE(OLD.provider, '') AS provider,
                   CASE WHEN OLD.channel = 'sms' THEN COALESCE(OLD.country, '') ELSE '' END AS country,
                   OLD.template AS template,
                   CASE WHEN OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL THEN OLD.currency ELSE '' END AS currency,
                   -1 AS deliveries,
                   CASE WHEN (OLD.status IN ('sent', 'delivered', 'undelivered') OR (OLD.status = 'failed' AND OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL)) THEN -1 ELSE 0 END AS messages,
                   CASE WHEN (OLD.status IN ('sent', 'delivered', 'undelivered') OR (OLD.status = 'failed' AND OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL)) THEN -1 * COALESCE(OLD.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN OLD.status = 'delivered' THEN -1 ELSE 0 END AS delivered,
                   CASE WHEN OLD.status = 'undelivered' THEN -1 ELSE 0 END AS undelivered,
                   CASE WHEN OLD.status = 'failed' THEN -1 ELSE 0 END AS failed,
                   CASE WHEN OLD.status = 'expired' THEN -1 ELSE 0 END AS expired,
                   CASE WHEN OLD.status = 'sent' THEN -1 ELSE 0 END AS sent,
                   CASE WHEN OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL AND NOT (COALESCE(OLD.cost_is_estimate, 0) <> 0) THEN -1 * OLD.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL AND COALESCE(OLD.cost_is_estimate, 0) <> 0 THEN -1 * OLD.cost_micros ELSE 0 END AS estimated_micros
            UNION ALL
            SELECT substr(NEW.created_at, 1, 10) AS day,
                   NEW.channel AS channel,
                   COALESCE(NEW.provider, '') AS provider,
                   CASE WHEN NEW.channel = 'sms' THEN COALESCE(NEW.country, '') ELSE '' END AS country,
                   NEW.template AS template,
                   CASE WHEN NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL THEN NEW.currency ELSE '' END AS currency,
                   1 AS deliveries,
                   CASE WHEN (NEW.status IN ('sent', 'delivered', 'undelivered') OR (NEW.status = 'failed' AND NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL)) THEN 1 ELSE 0 END AS messages,
                   CASE WHEN (NEW.status IN ('sent', 'delivered', 'undelivered') OR (NEW.status = 'failed' AND NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL)) THEN COALESCE(NEW.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN NEW.status = 'delivered' THEN 1 ELSE 0 END AS delivered,
                   CASE WHEN NEW.status = 'undelivered' THEN 1 ELSE 0 END AS undelivered,
                   CASE WHEN NEW.status = 'failed' THEN 1 ELSE 0 END AS failed,
                   CASE WHEN NEW.status = 'expired' THEN 1 ELSE 0 END AS expired,
                   CASE WHEN NEW.status = 'sent' THEN 1 ELSE 0 END AS sent,
                   CASE WHEN NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL AND NOT (COALESCE(NEW.cost_is_estimate, 0) <> 0) THEN NEW.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN NEW.cost_micros IS NOT NULL AND NEW.currency IS NOT NULL AND COALESCE(NEW.cost_is_estimate, 0) <> 0 THEN NEW.cost_micros ELSE 0 END AS estimated_micros) p
     GROUP BY day, channel, provider, country, template, currency
    ON CONFLICT (day, channel, provider, country, template, currency) DO UPDATE SET
        deliveries = cost_rollups.deliveries + excluded.deliveries,
        messages = cost_rollups.messages + excluded.messages,
        segments = cost_rollups.segments + excluded.segments,
        delivered = cost_rollups.delivered + excluded.delivered,
        undelivered = cost_rollups.undelivered + excluded.undelivered,
        failed = cost_rollups.failed + excluded.failed,
        expired = cost_rollups.expired + excluded.expired,
        sent = cost_rollups.sent + excluded.sent,
        actual_micros = cost_rollups.actual_micros + excluded.actual_micros,
        estimated_micros = cost_rollups.estimated_micros + excluded.estimated_micros;
END;

CREATE TRIGGER deliveries_cost_rollups_delete AFTER DELETE ON deliveries
    FOR EACH ROW
BEGIN
    INSERT INTO cost_rollups (day, channel, provider, country, template, currency, deliveries, messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, estimated_micros)
    SELECT day, channel, provider, country, template, currency, SUM(deliveries), SUM(messages), SUM(segments), SUM(delivered), SUM(undelivered), SUM(failed), SUM(expired), SUM(sent), SUM(actual_micros), SUM(estimated_micros)
      FROM (SELECT substr(OLD.created_at, 1, 10) AS day,
                   OLD.channel AS channel,
                   COALESCE(OLD.provider, '') AS provider,
                   CASE WHEN OLD.channel = 'sms' THEN COALESCE(OLD.country, '') ELSE '' END AS country,
                   OLD.template AS template,
                   CASE WHEN OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL THEN OLD.currency ELSE '' END AS currency,
                   -1 AS deliveries,
                   CASE WHEN (OLD.status IN ('sent', 'delivered', 'undelivered') OR (OLD.status = 'failed' AND OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL)) THEN -1 ELSE 0 END AS messages,
                   CASE WHEN (OLD.status IN ('sent', 'delivered', 'undelivered') OR (OLD.status = 'failed' AND OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL)) THEN -1 * COALESCE(OLD.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN OLD.status = 'delivered' THEN -1 ELSE 0 END AS delivered,
                   CASE WHEN OLD.status = 'undelivered' THEN -1 ELSE 0 END AS undelivered,
                   CASE WHEN OLD.status = 'failed' THEN -1 ELSE 0 END AS failed,
                   CASE WHEN OLD.status = 'expired' THEN -1 ELSE 0 END AS expired,
                   CASE WHEN OLD.status = 'sent' THEN -1 ELSE 0 END AS sent,
                   CASE WHEN OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL AND NOT (COALESCE(OLD.cost_is_estimate, 0) <> 0) THEN -1 * OLD.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN OLD.cost_micros IS NOT NULL AND OLD.currency IS NOT NULL AND COALESCE(OLD.cost_is_estimate, 0) <> 0 THEN -1 * OLD.cost_micros ELSE 0 END AS estimated_micros) p
     GROUP BY day, channel, provider, country, template, currency
    ON CONFLICT (day, channel, provider, country, template, currency) DO UPDATE SET
        deliveries = cost_rollups.deliveries + excluded.deliveries,
        messages = cost_rollups.messages + excluded.messages,
        segments = cost_rollups.segments + excluded.segments,
        delivered = cost_rollups.delivered + excluded.delivered,
        undelivered = cost_rollups.undelivered + excluded.undelivered,
        failed = cost_rollups.failed + excluded.failed,
        expired = cost_rollups.expired + excluded.expired,
        sent = cost_rollups.sent + excluded.sent,
        actual_micros = cost_rollups.actual_micros + excluded.actual_micros,
        estimated_micros = cost_rollups.estimated_micros + excluded.estimated_micros;
END;
