-- A payment as the API answers it, built here so that a call's effect and
-- its stored answer are written by one statement (one round trip, one
-- commit). Every answer that carries a payment is built by this function, so
-- first answers, replays and reads are alike. The amount is a string with
-- its two decimals, as the API takes it.
CREATE FUNCTION payments.answer(p payments.payments) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'trip_id', p.trip_id,
        'payment_id', p.payment_id,
        'status', p.status,
        'amount', p.amount::text,
        'currency', p.currency,
        'flight_booking_id', p.flight_booking_id,
        'car_booking_id', p.car_booking_id)
$$;
