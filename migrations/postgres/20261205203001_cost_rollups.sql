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
    day              DATE NOT NULL,
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
  FROM (SELECT (d.created_at AT TIME ZONE 'UTC')::date AS day,
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
         CASE WHEN d.cost_micros IS NOT NULL AND d.currency IS NOT NULL AND NOT (d.cost_is_estimate IS TRUE) THEN d.cost_micros ELSE 0 END AS actual_micros,
         CASE WHEN d.cost_micros IS NOT NULL AND d.currency IS NOT NULL AND d.cost_is_estimate IS TRUE THEN d.cost_micros ELSE 0 END AS estimated_micros
          FROM deliveries d) p
 GROUP BY day, channel, provider, country, template, currency;

-- Statement triggers over the transition tables: a batch of a thousand
-- deliveries moves each rollup row once, not a thousand times.
CREATE FUNCTION tuma_cost_rollups_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cost_rollups (day, channel, provider, country, template, currency, deliveries, messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, estimated_micros)
    SELECT day, channel, provider, country, template, currency, SUM(deliveries), SUM(messages), SUM(segments), SUM(delivered), SUM(undelivered), SUM(failed), SUM(expired), SUM(sent), SUM(actual_micros), SUM(estimated_micros)
      FROM (SELECT (n.created_at AT TIME ZONE 'UTC')::date AS day,
                   n.channel AS channel,
                   COALESCE(n.provider, '') AS provider,
                   CASE WHEN n.channel = 'sms' THEN COALESCE(n.country, '') ELSE '' END AS country,
                   n.template AS template,
                   CASE WHEN n.cost_micros IS NOT NULL AND n.currency IS NOT NULL THEN n.currency ELSE '' END AS currency,
                   1 AS deliveries,
                   CASE WHEN (n.status IN ('sent', 'delivered', 'undelivered') OR (n.status = 'failed' AND n.cost_micros IS NOT NULL AND n.currency IS NOT NULL)) THEN 1 ELSE 0 END AS messages,
                   CASE WHEN (n.status IN ('sent', 'delivered', 'undelivered') OR (n.status = 'failed' AND n.cost_micros IS NOT NULL AND n.currency IS NOT NULL)) THEN COALESCE(n.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN n.status = 'delivered' THEN 1 ELSE 0 END AS delivered,
                   CASE WHEN n.status = 'undelivered' THEN 1 ELSE 0 END AS undelivered,
                   CASE WHEN n.status = 'failed' THEN 1 ELSE 0 END AS failed,
                   CASE WHEN n.status = 'expired' THEN 1 ELSE 0 END AS expired,
                   CASE WHEN n.status = 'sent' THEN 1 ELSE 0 END AS sent,
                   CASE WHEN n.cost_micros IS NOT NULL AND n.currency IS NOT NULL AND NOT (n.cost_is_estimate IS TRUE) THEN n.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN n.cost_micros IS NOT NULL AND n.currency IS NOT NULL AND n.cost_is_estimate IS TRUE THEN n.cost_micros ELSE 0 END AS estimated_micros
              FROM new_rows n) p
     GROUP BY day, channel, provider, country, template, currency
    HAVING SUM(deliveries) <> 0 OR SUM(messages) <> 0 OR SUM(segments) <> 0 OR SUM(delivered) <> 0 OR SUM(undelivered) <> 0 OR SUM(failed) <> 0 OR SUM(expired) <> 0 OR SUM(sent) <> 0 OR SUM(actual_micros) <> 0 OR SUM(estimated_micros) <> 0
     -- In key order, so two transactions never wait on each other's rows in a cycle.
     ORDER BY day, channel, provider, country, template, currency
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
    RETURN NULL;
END;
$$;

CREATE FUNCTION tuma_cost_rollups_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cost_rollups (day, channel, provider, country, template, currency, deliveries, messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, estimated_micros)
    SELECT day, channel, provider, country, template, currency, SUM(deliveries), SUM(messages), SUM(segments), SUM(delivered), SUM(undelivered), SUM(failed), SUM(expired), SUM(sent), SUM(actual_micros), SUM(estimated_micros)
      FROM (SELECT (o.created_at AT TIME ZONE 'UTC')::date AS day,
                   o.channel AS channel,
                   COALESCE(o.provider, '') AS provider,
                   CASE WHEN o.channel = 'sms' THEN COALESCE(o.country, '') ELSE '' END AS country,
                   o.template AS template,
                   CASE WHEN o.cost_micros IS NOT NULL AND o.currency IS NOT NULL THEN o.currency ELSE '' END AS currency,
                   -1 AS deliveries,
                   CASE WHEN (o.status IN ('sent', 'delivered', 'undelivered') OR (o.status = 'failed' AND o.cost_micros IS NOT NULL AND o.currency IS NOT NULL)) THEN -1 ELSE 0 END AS messages,
                   CASE WHEN (o.status IN ('sent', 'delivered', 'undelivered') OR (o.status = 'failed' AND o.cost_micros IS NOT NULL AND o.currency IS NOT NULL)) THEN -1 * COALESCE(o.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN o.status = 'delivered' THEN -1 ELSE 0 END AS delivered,
                   CASE WHEN o.status = 'undelivered' THEN -1 ELSE 0 END AS undelivered,
                   CASE WHEN o.status = 'failed' THEN -1 ELSE 0 END AS failed,
                   CASE WHEN o.status = 'expired' THEN -1 ELSE 0 END AS expired,
                   CASE WHEN o.status = 'sent' THEN -1 ELSE 0 END AS sent,
                   CASE WHEN o.cost_micros IS NOT NULL AND o.currency IS NOT NULL AND NOT (o.cost_is_estimate IS TRUE) THEN -1 * o.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN o.cost_micros IS NOT NULL AND o.currency IS NOT NULL AND o.cost_is_estimate IS TRUE THEN -1 * o.cost_micros ELSE 0 END AS estimated_micros
              FROM old_rows o
            UNION ALL
            SELECT (n.created_at AT TIME ZONE 'UTC')::date AS day,
                   n.channel AS channel,
                   COALESCE(n.provider, '') AS provider,
                   CASE WHEN n.channel = 'sms' THEN COALESCE(n.country, '') ELSE '' END AS country,
                   n.template AS template,
                   CASE WHEN n.cost_micros IS NOT NULL AND n.currency IS NOT NULL THEN n.currency ELSE '' END AS currency,
                   1 AS deliveries,
                   CASE WHEN (n.status IN ('sent', 'delivered', 'undelivered') OR (n.status = 'failed' AND n.cost_micros IS NOT NULL AND n.currency IS NOT NULL)) THEN 1 ELSE 0 END AS messages,
                   CASE WHEN (n.status IN ('sent', 'delivered', 'undelivered') OR (n.status = 'failed' AND n.cost_micros IS NOT NULL AND n.currency IS NOT NULL)) THEN COALESCE(n.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN n.status = 'delivered' THEN 1 ELSE 0 END AS delivered,
                   CASE WHEN n.status = 'undelivered' THEN 1 ELSE 0 END AS undelivered,
                   CASE WHEN n.status = 'failed' THEN 1 ELSE 0 END AS failed,
                   CASE WHEN n.status = 'expired' THEN 1 ELSE 0 END AS expired,
                   CASE WHEN n.status = 'sent' THEN 1 ELSE 0 END AS sent,
                   CASE WHEN n.cost_micros IS NOT NULL AND n.currency IS NOT NULL AND NOT (n.cost_is_estimate IS TRUE) THEN n.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN n.cost_micros IS NOT NULL AND n.currency IS NOT NULL AND n.cost_is_estimate IS TRUE THEN n.cost_micros ELSE 0 END AS estimated_micros
              FROM new_rows n) p
     GROUP BY day, channel, provider, country, template, currency
    HAVING SUM(deliveries) <> 0 OR SUM(messages) <> 0 OR SUM(segments) <> 0 OR SUM(delivered) <> 0 OR SUM(undelivered) <> 0 OR SUM(failed) <> 0 OR SUM(expired) <> 0 OR SUM(sent) <> 0 OR SUM(actual_micros) <> 0 OR SUM(estimated_micros) <> 0
     -- In key order, so two transactions never wait on each other's rows in a cycle.
     ORDER BY day, channel, provider, country, template, currency
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
    RETURN NULL;
END;
$$;

CREATE FUNCTION tuma_cost_rollups_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cost_rollups (day, channel, provider, country, template, currency, deliveries, messages, segments, delivered, undelivered, failed, expired, sent, actual_micros, estimated_micros)
    SELECT day, channel, provider, country, template, currency, SUM(deliveries), SUM(messages), SUM(segments), SUM(delivered), SUM(undelivered), SUM(failed), SUM(expired), SUM(sent), SUM(actual_micros), SUM(estimated_micros)
      FROM (SELECT (o.created_at AT TIME ZONE 'UTC')::date AS day,
                   o.channel AS channel,
                   COALESCE(o.provider, '') AS provider,
                   CASE WHEN o.channel = 'sms' THEN COALESCE(o.country, '') ELSE '' END AS country,
                   o.template AS template,
                   CASE WHEN o.cost_micros IS NOT NULL AND o.currency IS NOT NULL THEN o.currency ELSE '' END AS currency,
                   -1 AS deliveries,
                   CASE WHEN (o.status IN ('sent', 'delivered', 'undelivered') OR (o.status = 'failed' AND o.cost_micros IS NOT NULL AND o.currency IS NOT NULL)) THEN -1 ELSE 0 END AS messages,
                   CASE WHEN (o.status IN ('sent', 'delivered', 'undelivered') OR (o.status = 'failed' AND o.cost_micros IS NOT NULL AND o.currency IS NOT NULL)) THEN -1 * COALESCE(o.segments, 0) ELSE 0 END AS segments,
                   CASE WHEN o.status = 'delivered' THEN -1 ELSE 0 END AS delivered,
                   CASE WHEN o.status = 'undelivered' THEN -1 ELSE 0 END AS undelivered,
                   CASE WHEN o.status = 'failed' THEN -1 ELSE 0 END AS failed,
                   CASE WHEN o.status = 'expired' THEN -1 ELSE 0 END AS expired,
                   CASE WHEN o.status = 'sent' THEN -1 ELSE 0 END AS sent,
                   CASE WHEN o.cost_micros IS NOT NULL AND o.currency IS NOT NULL AND NOT (o.cost_is_estimate IS TRUE) THEN -1 * o.cost_micros ELSE 0 END AS actual_micros,
                   CASE WHEN o.cost_micros IS NOT NULL AND o.currency IS NOT NULL AND o.cost_is_estimate IS TRUE THEN -1 * o.cost_micros ELSE 0 END AS estimated_micros
              FROM old_rows o) p
     GROUP BY day, channel, provider, country, template, currency
    HAVING SUM(deliveries) <> 0 OR SUM(messages) <> 0 OR SUM(segments) <> 0 OR SUM(delivered) <> 0 OR SUM(undelivered) <> 0 OR SUM(failed) <> 0 OR SUM(expired) <> 0 OR SUM(sent) <> 0 OR SUM(actual_micros) <> 0 OR SUM(estimated_micros) <> 0
     -- In key order, so two transactions never wait on each other's rows in a cycle.
     ORDER BY day, channel, provider, country, template, currency
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
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_cost_rollups_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tuma_cost_rollups_insert();
CREATE TRIGGER deliveries_cost_rollups_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tuma_cost_rollups_update();
CREATE TRIGGER deliveries_cost_rollups_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tuma_cost_rollups_delete();
