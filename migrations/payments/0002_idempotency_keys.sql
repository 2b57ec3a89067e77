-- The first answer to each Idempotency-Key, stored in the same transaction
-- as the call's effect, so that a resent call gets it back with no second
-- effect.
CREATE TABLE payments.idempotency_keys (
    key        text PRIMARY KEY,
    status     smallint,
    body       jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
