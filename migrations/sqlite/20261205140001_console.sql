-- Console sessions: a browser signed in with an API key. Only the SHA-256 of
-- the random session id is kept; the id itself lives in the browser's cookie.
CREATE TABLE console_sessions (
    id_hash      TEXT PRIMARY KEY,
    api_key_id   INTEGER NOT NULL REFERENCES api_keys (id),
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    -- created_at + 8 h: the session ends then whatever its use.
    expires_at   TEXT NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- The console's searches: newest first within a status or a provider, and
-- the provider health figures over the last minutes of attempts.
CREATE INDEX deliveries_status_created ON deliveries (status, created_at);
CREATE INDEX deliveries_provider_created ON deliveries (provider, created_at);
CREATE INDEX delivery_attempts_started ON delivery_attempts (started_at);
