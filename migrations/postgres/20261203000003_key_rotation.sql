-- Key rotation: a name is unique among live keys only, so a revoked key's
-- name can be used again, and a rotated key keeps working until its
-- `expires_at` (the grace) beside its replacement.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_name_key;
ALTER TABLE api_keys ADD COLUMN expires_at TIMESTAMPTZ;
-- One key per name that is neither revoked nor rotated out.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name)
    WHERE revoked_at IS NULL AND expires_at IS NULL;
