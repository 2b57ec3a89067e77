-- Webhooks: the subscriptions, and the outbox of their deliveries. A saga's
-- end writes one delivery per matching subscription in the same
-- transaction as the end itself, so that no notification is lost to a
-- crash; a worker sends each, at least once, until it is answered 2xx.
CREATE TABLE orchestrator.webhooks (
    -- `wh_<hex>`, or `config` for the one WEBHOOK_URL sets.
    id          text PRIMARY KEY,
    url         text NOT NULL,
    -- `whsec_<base64>`, the Standard Webhooks form.
    secret      text NOT NULL,
    -- Empty: every event type, every definition.
    event_types text[] NOT NULL DEFAULT '{}',
    definitions text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orchestrator.webhook_deliveries (
    -- The `webhook-id` header: the same for every attempt, so that a
    -- receiver drops a second copy.
    id              text PRIMARY KEY,
    webhook         text NOT NULL REFERENCES orchestrator.webhooks (id) ON DELETE CASCADE,
    saga_id         text NOT NULL,
    type            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    -- When it is due; while an attempt is under way, when that attempt's
    -- claim runs out (a worker that died leaves it due again).
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);

CREATE INDEX webhook_deliveries_due
    ON orchestrator.webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_saga ON orchestrator.webhook_deliveries (saga_id);
