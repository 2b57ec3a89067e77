-- Flight reservations, one row per trip. A cancel for a trip never reserved
-- writes a tombstone (status 'cancelled', trip fields empty) so that a late
-- reserve is refused.
CREATE TYPE flights.booking_status AS ENUM ('pending', 'confirmed', 'cancelled');

CREATE TABLE flights.reservations (
    trip_id     text PRIMARY KEY,
    booking_id  uuid NOT NULL,
    status      flights.booking_status NOT NULL,
    depart_city text,
    depart_time timestamptz,
    arrive_city text,
    arrive_time timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
