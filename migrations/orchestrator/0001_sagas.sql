-- Saga state and the append-only log of every step event.
CREATE TYPE orchestrator.saga_status AS ENUM ('running', 'compensating', 'succeeded', 'failed');
CREATE TYPE orchestrator.step_event AS ENUM ('started', 'retrying', 'succeeded', 'failed');

CREATE TABLE orchestrator.sagas (
    trip_id            text PRIMARY KEY,
    run_type           text NOT NULL,
    status             orchestrator.saga_status NOT NULL,
    -- The saga definition this saga started with, and its position in it:
    -- while running, the index of the forward step being run; while
    -- compensating, the index of the forward step whose compensation runs.
    definition_version integer NOT NULL,
    cursor             integer NOT NULL,
    input              jsonb NOT NULL,
    -- Each finished step's answer, by step name, handed to later steps.
    outputs            jsonb NOT NULL DEFAULT '{}',
    -- The fence: every transition is `.. WHERE version = <the one read>`.
    version            bigint NOT NULL DEFAULT 0,
    -- The lease of the process driving the saga.
    owner              text,
    lease_until        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sagas_newest ON orchestrator.sagas (created_at DESC, trip_id DESC);
CREATE INDEX sagas_status_newest ON orchestrator.sagas (status, created_at DESC, trip_id DESC);
CREATE INDEX sagas_unfinished ON orchestrator.sagas (lease_until)
    WHERE status IN ('running', 'compensating');

CREATE TABLE orchestrator.saga_log (
    trip_id text NOT NULL REFERENCES orchestrator.sagas (trip_id),
    seq     integer NOT NULL,
    step    text NOT NULL CHECK (step IN (
        'ReserveFlight', 'ReserveCarRental', 'ProcessPayment', 'ConfirmFlight',
        'ConfirmCarRental', 'CancelFlightReservation', 'CancelRentalReservation',
        'RefundPayment')),
    status  orchestrator.step_event NOT NULL,
    attempt integer NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}',
    at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trip_id, seq)
);
