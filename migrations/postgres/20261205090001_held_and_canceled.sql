-- Two more delivery statuses: `held` (the spend guard keeps a delivery back
-- until its budget allows it or ops release it) and `canceled` (taken back by
-- its caller before any provider had it).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'undelivered', 'failed', 'expired', 'held', 'canceled'));
