-- An optional deadline: when it passes before the forward steps have
-- finished, the saga compensates instead of hanging.
ALTER TABLE orchestrator.sagas ADD COLUMN deadline timestamptz;
