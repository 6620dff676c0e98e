-- A delivery status for a send whose outcome nobody knows: the request was
-- written, no answer came, and `retry.after_unknown` says not to send it
-- again (or every resend it allows is spent). Its webhook event is
-- `delivery.unknown`, raised by the same trigger as the others. The CHECK
-- is widened in the stored schema text, as for `held` and `canceled`.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''held'', ''canceled'')', '''held'', ''canceled'', ''unknown'')')
 WHERE type = 'table' AND name = 'deliveries';
PRAGMA writable_schema = RESET;

DROP TRIGGER deliveries_webhook_events;
CREATE TRIGGER deliveries_webhook_events AFTER UPDATE OF status ON deliveries
    FOR EACH ROW
    WHEN NEW.api_key_name IS NOT NULL AND OLD.status IS NOT NEW.status
         AND NEW.status IN ('sent', 'delivered', 'undelivered', 'failed', 'expired', 'canceled', 'unknown')
BEGIN
    INSERT INTO webhook_events (id, endpoint_id, delivery_id, type, sequence, created_at,
                                next_attempt_at, attempts, status)
    SELECT 'msg_' || lower(hex(randomblob(16))), e.id, NEW.id, 'delivery.' || NEW.status,
           COALESCE((SELECT MAX(w.sequence) FROM webhook_events w WHERE w.delivery_id = NEW.id), 0) + 1,
           NEW.updated_at, NEW.updated_at, 0, 'pending'
      FROM webhook_endpoints e
     WHERE e.api_key_name = NEW.api_key_name AND e.disabled_at IS NULL
       AND instr(e.events, ',delivery.' || NEW.status || ',') > 0;
END;
