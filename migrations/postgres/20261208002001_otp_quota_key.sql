-- Who the per-recipient OTP limit counts an OTP as (`Recipient::quota_key`):
-- the number, or the mailbox its address reaches (no `+tag`; Gmail without
-- dots, googlemail.com as gmail.com), so tagged variants of one address share
-- one quota. The message still goes to `recipient`. Rows from before get the
-- same key, computed here as `EmailAddress::mailbox` does; notifications none.
ALTER TABLE deliveries ADD COLUMN quota_key TEXT;
UPDATE deliveries SET quota_key = recipient WHERE kind = 'otp';
UPDATE deliveries SET quota_key = substr(quota_key, 1, strpos(quota_key, '+') - 1)
        || substr(quota_key, strpos(quota_key, '@'))
    WHERE kind = 'otp' AND channel = 'email'
      AND strpos(quota_key, '+') > 0 AND strpos(quota_key, '+') < strpos(quota_key, '@');
UPDATE deliveries SET quota_key = substr(quota_key, 1, strpos(quota_key, '@')) || 'gmail.com'
    WHERE kind = 'otp' AND channel = 'email' AND quota_key LIKE '%@googlemail.com';
UPDATE deliveries SET quota_key = replace(substr(quota_key, 1, strpos(quota_key, '@') - 1), '.', '')
        || '@gmail.com'
    WHERE kind = 'otp' AND channel = 'email' AND quota_key LIKE '%@gmail.com';
CREATE INDEX deliveries_otp_quota ON deliveries (quota_key, created_at) WHERE kind = 'otp';

-- The limit's locks and count, now by quota key (the argument's name kept:
-- the keys the limit counts). Returns each OTP's key as `recipient`.
CREATE OR REPLACE FUNCTION tuma_lock_recent_otps(recipients TEXT[], since TIMESTAMPTZ)
RETURNS TABLE (recipient TEXT, created_at TIMESTAMPTZ)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(locks.h)
    FROM (SELECT DISTINCT hashtextextended(r, 0) AS h FROM unnest(recipients) AS r ORDER BY h) AS locks;
    RETURN QUERY
        SELECT d.quota_key, d.created_at FROM deliveries AS d
        WHERE d.quota_key = ANY (recipients) AND d.kind = 'otp' AND d.created_at > since
        ORDER BY d.created_at;
END
$$;
