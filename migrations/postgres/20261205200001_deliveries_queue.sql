-- The deliveries table is the queue: a delivery is due when it is `pending`
-- and its `next_attempt_at` has come; a worker claims it with a lease
-- (`leased_by`, `lease_until`), renewing `job_id` as the claim's token.
ALTER TABLE deliveries ADD COLUMN lease_until TIMESTAMPTZ;
ALTER TABLE deliveries ADD COLUMN leased_by TEXT;

-- Every pending delivery has a time it is due (held ones released before
-- this had none: due at once, as a release now makes them).
UPDATE deliveries SET next_attempt_at = COALESCE(next_attempt_at, created_at)
WHERE status = 'pending' AND next_attempt_at IS NULL;

-- One lane per kind, each with its own index of what is due.
CREATE INDEX deliveries_due_otp ON deliveries (next_attempt_at)
    WHERE status = 'pending' AND kind = 'otp';
CREATE INDEX deliveries_due_notification ON deliveries (next_attempt_at)
    WHERE status = 'pending' AND kind = 'notification';
-- Sends in flight, by when their lease runs out (crash recovery).
CREATE INDEX deliveries_sending_lease ON deliveries (lease_until)
    WHERE status = 'sending';
-- The job id no longer names a queue row to look up.
DROP INDEX IF EXISTS deliveries_job;

-- Wake-ups: a transaction that makes deliveries pending notifies their
-- lane's channel (`tuma_otp`, `tuma_notification`); Postgres delivers it at
-- commit, to every listening process, once per channel and transaction.
CREATE FUNCTION tuma_wake_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tuma_' || k.kind, '')
    FROM (SELECT DISTINCT kind FROM tuma_new_rows WHERE status = 'pending') AS k;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_wake_inserted AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS tuma_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tuma_wake_inserted();

CREATE FUNCTION tuma_wake_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tuma_' || NEW.kind, '');
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_wake_pending AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (NEW.status = 'pending' AND OLD.status <> 'pending')
    EXECUTE FUNCTION tuma_wake_pending();
