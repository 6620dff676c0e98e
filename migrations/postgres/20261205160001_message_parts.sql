-- A message the provider split into several parts, each with its own id
-- (a long SMS): one row per part, so a receipt for any part finds its
-- delivery and attempt. A message with one id has no rows here.
CREATE TABLE provider_message_parts (
    provider    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    delivery_id TEXT NOT NULL REFERENCES deliveries (id),
    attempt     BIGINT NOT NULL,
    part        BIGINT NOT NULL,
    PRIMARY KEY (provider, message_id)
);

CREATE INDEX provider_message_parts_attempt ON provider_message_parts (delivery_id, attempt, part);
