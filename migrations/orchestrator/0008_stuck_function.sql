-- Whether a compensating saga is stuck: its current step (the one started
-- last) has been failing for longer than `after_secs`, its first failure
-- since it started being older. The list's `stuck` filter and the console's
-- counts both ask, so the rule is written once.
CREATE FUNCTION orchestrator.compensation_stuck(id text, after_secs float8)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT EXISTS (
        SELECT 1 FROM orchestrator.saga_log f
        WHERE f.saga_id = id AND f.status = 'retrying'
          AND f.at < now() - make_interval(secs => after_secs)
          AND f.seq > (SELECT max(seq) FROM orchestrator.saga_log c
                       WHERE c.saga_id = id AND c.status = 'started'))
$$;
