-- The chat a manager's reply goes to: the latest customer message on a lead.
ALTER TABLE conversations ADD COLUMN last_customer_ms BIGINT;
-- Fencing: each new holder of an account's lock takes the next epoch; a write
-- made under an older epoch (a holder that lost its lock without knowing) is refused.
CREATE TABLE account_fences (
    account TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
