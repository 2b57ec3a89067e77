-- Any saga, as a document: the definitions, immutable per (name, version),
-- and sagas and their logs that name the definition they run.
CREATE TABLE orchestrator.definitions (
    name       text NOT NULL,
    version    integer NOT NULL CHECK (version > 0),
    -- sha256 of the canonical JSON of the document: the same content has the
    -- same digest whatever its syntax or layout.
    digest     text NOT NULL,
    document   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Every saga so far ran the travel definition, and its trip id is its id.
ALTER TABLE orchestrator.sagas RENAME COLUMN trip_id TO saga_id;
ALTER TABLE orchestrator.sagas ADD COLUMN definition text NOT NULL DEFAULT 'travel';
ALTER TABLE orchestrator.sagas ALTER COLUMN definition DROP DEFAULT;
-- The travel saga's own fields live in its input: the run type is there
-- already, and the trip id is the saga's id.
ALTER TABLE orchestrator.sagas DROP COLUMN run_type;
UPDATE orchestrator.sagas SET input = input - 'trip_id' WHERE input ? 'trip_id';
CREATE INDEX sagas_definition_newest
    ON orchestrator.sagas (definition, created_at DESC, saga_id DESC);

-- Step names are checked against the saga's definition, not by the table.
ALTER TABLE orchestrator.saga_log RENAME COLUMN trip_id TO saga_id;
ALTER TABLE orchestrator.saga_log DROP CONSTRAINT saga_log_step_check;
