-- A reservation as the API answers it, built here so that a call's effect
-- and its stored answer are written by one statement (one round trip, one
-- commit). Every answer that carries a reservation is built by this
-- function, so first answers, replays and reads are alike. Timestamps are
-- written as chrono writes them (RFC 3339 in UTC, `Z`, fractional seconds
-- only when there are some).
CREATE FUNCTION flights.rfc3339(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM t)::int8 % 1000000 = 0 THEN ''
                WHEN extract(microseconds FROM t)::int8 % 1000 = 0
                    THEN to_char(t AT TIME ZONE 'UTC', '.MS')
                ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
        || 'Z'
$$;

CREATE FUNCTION flights.answer(r flights.reservations) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'trip_id', r.trip_id,
        'booking_id', r.booking_id,
        'status', r.status,
        'depart_city', r.depart_city,
        'depart_time', flights.rfc3339(r.depart_time),
        'arrive_city', r.arrive_city,
        'arrive_time', flights.rfc3339(r.arrive_time))
$$;
