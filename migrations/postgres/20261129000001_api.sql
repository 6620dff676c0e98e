-- HTTP API keys: only the SHA-256 of a key is kept; the key itself is shown once.
CREATE TABLE api_keys (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    key_hash     TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

-- Idempotency-Key of a POST, per API key, kept 24 h: claimed in the same
-- transaction as the delivery it created, with the response to replay.
CREATE TABLE idempotency_keys (
    api_key_id      BIGINT NOT NULL REFERENCES api_keys (id),
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    response_status BIGINT NOT NULL,
    response_body   TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (api_key_id, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The per-recipient OTP limit counts recent OTPs to one recipient.
CREATE INDEX deliveries_recipient_created ON deliveries (recipient, created_at);
