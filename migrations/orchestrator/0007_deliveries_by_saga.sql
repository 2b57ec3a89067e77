-- A delivery's row is written in the statement that ends its saga and
-- updated once it is sent, so each check and index on it costs twice a
-- saga, in the writer's one serial statement.
--
-- The deliveries are looked up by saga (the API) or by their due time (the
-- worker), never by id alone: the key leads with the saga, and the saga's
-- own index goes.
ALTER TABLE orchestrator.webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_pkey,
    ADD PRIMARY KEY (saga_id, id);
DROP INDEX orchestrator.webhook_deliveries_saga;

-- The foreign key checked (and share-locked) the subscription's row for
-- every delivery inserted. Deleting a subscription deletes its deliveries
-- in the same statement instead, and a delivery whose subscription is gone
-- (enqueued by a statement that began before the delete) is failed by the
-- worker's claim, not sent.
ALTER TABLE orchestrator.webhook_deliveries DROP CONSTRAINT webhook_deliveries_webhook_fkey;

-- The process whose claim a pending delivery is under, if any: a process
-- restarted with the same ORCHESTRATOR_ID, or one stopping cleanly, gives
-- its claims back at once instead of leaving them to run out.
ALTER TABLE orchestrator.webhook_deliveries ADD COLUMN owner text;
