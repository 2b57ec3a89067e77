-- Payments, one row per trip. A refund for a trip never charged writes a
-- tombstone (status 'refunded', amount empty) so that a late charge is
-- refused.
CREATE TYPE payments.payment_status AS ENUM ('charged', 'refunded');

CREATE TABLE payments.payments (
    trip_id           text PRIMARY KEY,
    payment_id        uuid NOT NULL,
    status            payments.payment_status NOT NULL,
    amount            numeric(12, 2),
    currency          text,
    flight_booking_id uuid,
    car_booking_id    uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
