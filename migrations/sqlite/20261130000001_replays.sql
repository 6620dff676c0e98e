-- A replay is a new delivery linked to the one it replays; the original keeps its history.
ALTER TABLE deliveries ADD COLUMN replay_of TEXT REFERENCES deliveries (id);
-- Who asked for the replay (the OS user for the CLI, the key name for the API), and when.
ALTER TABLE deliveries ADD COLUMN replayed_by TEXT;
ALTER TABLE deliveries ADD COLUMN replayed_at TEXT;

-- At most one replay of a delivery that is still going or went through: a second
-- replay (two operators at once, or a retried request) fails on this index. A replay
-- that itself failed, went undelivered or expired leaves room for another.
CREATE UNIQUE INDEX deliveries_one_replay ON deliveries (replay_of)
    WHERE replay_of IS NOT NULL AND status NOT IN ('failed', 'undelivered', 'expired');
CREATE INDEX deliveries_replay_of ON deliveries (replay_of);
