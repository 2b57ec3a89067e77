//! Flight reservations: the `flights.reservations` table behind the booking
//! rules of [`common::booking`] (reserve, confirm, cancel, read one).

use common::booking::Bookings;
use common::wire::{BookingStatus, FlightRequest, FlightReservation, RunType};
use sqlx::PgConnection;
use uuid::Uuid;

/// flights-svc's bookings.
#[derive(Debug)]
pub struct Flights;

impl Bookings for Flights {
    type Request = FlightRequest;
    type Row = FlightReservation;

    const SERVICE: &'static str = "flights-svc";
    const NOUN: &'static str = "flight reservation";
    const CANCELLED: &'static str = "reservation_cancelled";
    const KEYS: &'static str = "flights.idempotency_keys";
    const FAIL_RESERVE: RunType = RunType::FailFlightsReservation;
    const FAIL_CONFIRM: RunType = RunType::FailFlightsConfirmation;

    fn trip_id(req: &FlightRequest) -> &str {
        &req.trip_id
    }

    fn run_type(req: &FlightRequest) -> RunType {
        req.run_type
    }

    async fn insert_pending(
        conn: &mut PgConnection,
        req: &FlightRequest,
    ) -> sqlx::Result<Option<FlightReservation>> {
        sqlx::query_as!(
            FlightReservation,
            r#"INSERT INTO flights.reservations
                   (trip_id, booking_id, status, depart_city, depart_time, arrive_city, arrive_time)
               VALUES ($1, $2, 'pending', $3, $4, $5, $6)
               ON CONFLICT (trip_id) DO NOTHING
               RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                         depart_city, depart_time, arrive_city, arrive_time"#,
            req.trip_id,
            Uuid::new_v4(),
            req.depart_city,
            req.depart_time,
            req.arrive_city,
            req.arrive_time,
        )
        .fetch_optional(conn)
        .await
    }

    async fn confirm_pending(
        conn: &mut PgConnection,
        trip_id: &str,
        booking_id: Option<Uuid>,
    ) -> sqlx::Result<Option<FlightReservation>> {
        sqlx::query_as!(
            FlightReservation,
            r#"UPDATE flights.reservations SET status = 'confirmed', updated_at = now()
               WHERE trip_id = $1 AND status = 'pending' AND ($2::uuid IS NULL OR booking_id = $2)
               RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                         depart_city, depart_time, arrive_city, arrive_time"#,
            trip_id,
            booking_id,
        )
        .fetch_optional(conn)
        .await
    }

    async fn cancel(
        conn: &mut PgConnection,
        trip_id: &str,
    ) -> sqlx::Result<Option<FlightReservation>> {
        sqlx::query_as!(
            FlightReservation,
            r#"INSERT INTO flights.reservations (trip_id, booking_id, status)
               VALUES ($1, $2, 'cancelled')
               ON CONFLICT (trip_id) DO UPDATE SET status = 'cancelled', updated_at = now()
                   WHERE reservations.status <> 'cancelled'
               RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                         depart_city, depart_time, arrive_city, arrive_time"#,
            trip_id,
            Uuid::new_v4(),
        )
        .fetch_optional(conn)
        .await
    }

    async fn find(
        conn: &mut PgConnection,
        trip_id: &str,
    ) -> sqlx::Result<Option<FlightReservation>> {
        sqlx::query_as!(
            FlightReservation,
            r#"SELECT trip_id, booking_id, status AS "status: BookingStatus",
                      depart_city, depart_time, arrive_city, arrive_time
               FROM flights.reservations WHERE trip_id = $1"#,
            trip_id,
        )
        .fetch_optional(conn)
        .await
    }
}
