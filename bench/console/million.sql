-- A million ended sagas over ~23 days, 1 in 20 failed, five log rows each;
-- and 100 of another definition, the oldest.
INSERT INTO orchestrator.sagas
    (saga_id, definition, status, definition_version, cursor, input, version, created_at, updated_at)
SELECT 'm-' || g, 'travel',
       (CASE WHEN g % 20 = 0 THEN 'failed' ELSE 'succeeded' END)::orchestrator.saga_status,
       2, -1, '{"run_type": "success"}', 5,
       now() - interval '1 hour' - g * interval '2 s',
       now() - interval '1 hour' - g * interval '2 s' + interval '1 s'
FROM generate_series(1, 1000000) g;
INSERT INTO orchestrator.sagas
    (saga_id, definition, status, definition_version, cursor, input, version, created_at, updated_at)
SELECT 'shop-' || g, 'shop', 'succeeded', 1, -1, '{}', 5,
       now() - interval '40 days' - g * interval '1 s', now() - interval '40 days'
FROM generate_series(1, 100) g;
INSERT INTO orchestrator.saga_log (saga_id, seq, step, status, attempt, detail, at)
SELECT 'm-' || g, s.seq, s.step, 'succeeded', 1, '{}', now() - interval '1 hour' - g * interval '2 s'
FROM generate_series(1, 1000000) g,
     (VALUES (1, 'ReserveFlight'), (2, 'ReserveCarRental'), (3, 'ProcessPayment'),
             (4, 'ConfirmFlight'), (5, 'ConfirmCarRental')) AS s(seq, step);
VACUUM ANALYZE orchestrator.sagas;
VACUUM ANALYZE orchestrator.saga_log;
