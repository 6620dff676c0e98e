-- What each sent delivery was counted for in each budget's period: its
-- actual cost where the provider gave one with the send, else the estimate.
-- A price learned later (a receipt, the reconciler) replaces it, and the
-- difference moves the spend of the period the send was counted in, in the
-- same transaction as the price is stored.
CREATE TABLE budget_charges (
    delivery_id  TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    currency     TEXT NOT NULL,
    period       TEXT NOT NULL,
    period_start TEXT NOT NULL,
    micros       INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, currency, period)
);
