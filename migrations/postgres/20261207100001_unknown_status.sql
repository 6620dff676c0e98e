-- A delivery status for a send whose outcome nobody knows: the request was
-- written, no answer came, and `retry.after_unknown` says not to send it
-- again (or every resend it allows is spent). Its webhook event is
-- `delivery.unknown`, raised by the same trigger as the others.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'undelivered', 'failed', 'expired', 'held', 'canceled', 'unknown'));

DROP TRIGGER deliveries_webhook_events ON deliveries;
CREATE TRIGGER deliveries_webhook_events AFTER UPDATE OF status ON deliveries
    FOR EACH ROW
    WHEN (NEW.api_key_name IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('sent', 'delivered', 'undelivered', 'failed', 'expired', 'canceled', 'unknown'))
    EXECUTE FUNCTION tuma_webhook_events();
