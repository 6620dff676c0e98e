-- no-transaction
-- Key rotation: a name is unique among live keys only, so a revoked key's
-- name can be used again, and a rotated key keeps working until its
-- `expires_at` (the grace) beside its replacement. SQLite cannot drop the
-- column's UNIQUE, so the table is rebuilt the documented way: foreign keys
-- off (idempotency_keys refers to it), all in one transaction, checked.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE api_keys_rotation (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    last_used_at TEXT,
    -- Set when the key is rotated out: it stops working at this time.
    expires_at   TEXT
);
INSERT INTO api_keys_rotation (id, name, key_hash, scopes, created_at, revoked_at, last_used_at)
    SELECT id, name, key_hash, scopes, created_at, revoked_at, last_used_at FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_rotation RENAME TO api_keys;
-- One key per name that is neither revoked nor rotated out.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name)
    WHERE revoked_at IS NULL AND expires_at IS NULL;
COMMIT;
PRAGMA foreign_keys = ON;
