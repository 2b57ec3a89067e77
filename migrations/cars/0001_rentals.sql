-- Car rentals, one row per trip. A cancel for a trip never reserved writes a
-- tombstone (status 'cancelled', rental fields empty) so that a late reserve
-- is refused.
CREATE TYPE cars.booking_status AS ENUM ('pending', 'confirmed', 'cancelled');

CREATE TABLE cars.rentals (
    trip_id     text PRIMARY KEY,
    booking_id  uuid NOT NULL,
    status      cars.booking_status NOT NULL,
    rental      text,
    rental_from timestamptz,
    rental_to   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
