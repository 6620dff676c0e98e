-- Why an attempt went to its provider: primary, failover, or a skipped open circuit.
ALTER TABLE delivery_attempts ADD COLUMN reason TEXT;
