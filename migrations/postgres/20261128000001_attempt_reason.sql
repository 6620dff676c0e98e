-- Why an attempt went to its provider: primary, failover, or a skipped open circuit.
ALTER TABLE delivery_attempts ADD COLUMN reason TEXT;
-- Segments as the provider counted them, beside tuma's own count in `segments`.
ALTER TABLE delivery_attempts ADD COLUMN provider_segments BIGINT;
