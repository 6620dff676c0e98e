-- Who the per-recipient OTP limit counts an OTP as (`Recipient::quota_key`):
-- the number, or the mailbox its address reaches (no `+tag`; Gmail without
-- dots, googlemail.com as gmail.com), so tagged variants of one address share
-- one quota. The message still goes to `recipient`. Rows from before get the
-- same key, computed here as `EmailAddress::mailbox` does; notifications none.
ALTER TABLE deliveries ADD COLUMN quota_key TEXT;
UPDATE deliveries SET quota_key = recipient WHERE kind = 'otp';
UPDATE deliveries SET quota_key = substr(quota_key, 1, instr(quota_key, '+') - 1)
        || substr(quota_key, instr(quota_key, '@'))
    WHERE kind = 'otp' AND channel = 'email'
      AND instr(quota_key, '+') > 0 AND instr(quota_key, '+') < instr(quota_key, '@');
UPDATE deliveries SET quota_key = substr(quota_key, 1, instr(quota_key, '@')) || 'gmail.com'
    WHERE kind = 'otp' AND channel = 'email' AND quota_key LIKE '%@googlemail.com';
UPDATE deliveries SET quota_key = replace(substr(quota_key, 1, instr(quota_key, '@') - 1), '.', '')
        || '@gmail.com'
    WHERE kind = 'otp' AND channel = 'email' AND quota_key LIKE '%@gmail.com';
CREATE INDEX deliveries_otp_quota ON deliveries (quota_key, created_at) WHERE kind = 'otp';
