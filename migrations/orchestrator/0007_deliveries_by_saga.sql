-- A delivery's row is written in the statement that ends its saga and
-- updated once it is sent, so each of its indexes costs twice a saga. The
-- deliveries are looked up by saga (the API) or by their due time (the
-- worker), never by id alone: the key leads with the saga, and the saga's
-- own index goes.
ALTER TABLE orchestrator.webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_pkey,
    ADD PRIMARY KEY (saga_id, id);
DROP INDEX orchestrator.webhook_deliveries_saga;
