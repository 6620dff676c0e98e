-- When a delivery was first due: its acceptance, or the time its caller
-- scheduled it for. A notification's retry budget (`retry.give_up_after`)
-- runs from here, not from its first attempt. Rows from before it have
-- none: their budget runs from `created_at`.
ALTER TABLE deliveries ADD COLUMN send_at TEXT;
