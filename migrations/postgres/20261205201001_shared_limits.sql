-- Many tuma processes on one database.
--
-- A provider's rate-limit bucket (GCRA), shared by every process: the
-- theoretical arrival time of its next token, in microseconds since the Unix
-- epoch by the database's clock, and how many tokens the last take granted.
-- Used on Postgres; SQLite, one host, keeps each process's own limiter.
CREATE TABLE provider_rate_buckets (
    provider  TEXT PRIMARY KEY,
    tat_us    BIGINT NOT NULL,
    granted   BIGINT NOT NULL DEFAULT 0
);

-- A provider's circuit opened by one process, so every process skips it
-- until open_until. Used on Postgres; SQLite keeps each process's breaker.
CREATE TABLE provider_circuits (
    provider    TEXT PRIMARY KEY,
    open_until  TIMESTAMPTZ NOT NULL,
    opened_by   TEXT NOT NULL,
    opened_at   TIMESTAMPTZ NOT NULL
);

-- Housekeeping (sweeper, price reconciler, webhook dispatcher) runs in the
-- one process holding this lease; another takes it over once it expires.
CREATE TABLE housekeeping_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
