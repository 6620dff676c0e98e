-- The per-recipient OTP limit in one round trip: lock each recipient (an
-- advisory transaction lock, taken in hash order so two callers never wait
-- on each other in a cycle), then read their OTPs since `since`. The read is
-- a statement of its own inside a VOLATILE function, so its snapshot is
-- taken after the locks: it sees every OTP a transaction that held one of
-- them committed.
CREATE FUNCTION tuma_lock_recent_otps(recipients TEXT[], since TIMESTAMPTZ)
RETURNS TABLE (recipient TEXT, created_at TIMESTAMPTZ)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(locks.h)
    FROM (SELECT DISTINCT hashtextextended(r, 0) AS h FROM unnest(recipients) AS r ORDER BY h) AS locks;
    RETURN QUERY
        SELECT d.recipient, d.created_at FROM deliveries AS d
        WHERE d.recipient = ANY (recipients) AND d.kind = 'otp' AND d.created_at > since
        ORDER BY d.created_at;
END
$$;
