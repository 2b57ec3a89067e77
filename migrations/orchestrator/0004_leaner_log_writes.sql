-- Cheaper transitions: five per saga, each a saga row update and one or two
-- log rows.
--
-- Log rows are written only by the statement that writes their saga row (the
-- insert is joined to the rows that statement changed), so the foreign key
-- added nothing but a trigger call per log row.
ALTER TABLE orchestrator.saga_log DROP CONSTRAINT saga_log_trip_id_fkey;

-- Each step's answer is in its `succeeded` log row already; keeping a second
-- copy on the saga row made every update rewrite it. Outputs are read from
-- the log now.
ALTER TABLE orchestrator.sagas DROP COLUMN outputs;
