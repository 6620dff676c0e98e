-- Each endpoint's due events, oldest due first: the dispatcher fills each
-- endpoint's own send slots, so a backlog behind one endpoint is never read
-- to find another's events.
CREATE INDEX webhook_events_endpoint_due ON webhook_events (endpoint_id, next_attempt_at)
    WHERE status = 'pending';
