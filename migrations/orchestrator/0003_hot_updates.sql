-- Every transition rewrites the saga row. Index nothing that changes at each
-- step (lease_until did), and leave room on each page, so that most of those
-- updates are HOT: no index is touched. The claim query reads the unfinished
-- sagas (few: those in flight) through this partial index and checks their
-- leases.
DROP INDEX orchestrator.sagas_unfinished;
CREATE INDEX sagas_unfinished ON orchestrator.sagas (trip_id)
    WHERE status IN ('running', 'compensating');
ALTER TABLE orchestrator.sagas SET (fillfactor = 70);
