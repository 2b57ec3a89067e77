//! Flight reservations: the `flights.reservations` table behind the booking
//! rules of [`common::booking`] (reserve, confirm, cancel, read one). Every
//! answer is built by `flights.answer` (migration 0003).

use common::booking::{Bookings, Cancelled, Found};
use common::wire::{BookingStatus, FlightRequest, RunType};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// flights-svc's bookings.
#[derive(Debug)]
pub struct Flights;

impl Bookings for Flights {
    type Request = FlightRequest;
    type Booking = common::wire::FlightReservation;

    const SERVICE: &'static str = "flights-svc";
    const TAG: &'static str = "flights";
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

    async fn reserve(
        conn: &mut PgConnection,
        req: &FlightRequest,
        key: Option<&str>,
    ) -> sqlx::Result<Option<Value>> {
        sqlx::query_scalar!(
            r#"WITH done AS (
                   INSERT INTO flights.reservations
                       (trip_id, booking_id, status, depart_city, depart_time, arrive_city, arrive_time)
                   VALUES ($1, $2, 'pending', $3, $4, $5, $6)
                   ON CONFLICT (trip_id) DO NOTHING
                   RETURNING flights.answer(reservations) AS body),
               kept AS (
                   INSERT INTO flights.idempotency_keys (key, status, body)
                   SELECT $7, 200, body FROM done WHERE $7::text IS NOT NULL)
               SELECT body AS "body!" FROM done"#,
            req.trip_id,
            Uuid::new_v4(),
            req.depart_city,
            req.depart_time,
            req.arrive_city,
            req.arrive_time,
            key,
        )
        .fetch_optional(conn)
        .await
    }

    async fn confirm(
        conn: &mut PgConnection,
        trip_id: &str,
        booking_id: Option<Uuid>,
        key: Option<&str>,
    ) -> sqlx::Result<Option<Value>> {
        sqlx::query_scalar!(
            r#"WITH done AS (
                   UPDATE flights.reservations SET status = 'confirmed', updated_at = now()
                   WHERE trip_id = $1 AND status = 'pending' AND ($2::uuid IS NULL OR booking_id = $2)
                   RETURNING flights.answer(reservations) AS body),
               kept AS (
                   INSERT INTO flights.idempotency_keys (key, status, body)
                   SELECT $3, 200, body FROM done WHERE $3::text IS NOT NULL)
               SELECT body AS "body!" FROM done"#,
            trip_id,
            booking_id,
            key,
        )
        .fetch_optional(conn)
        .await
    }

    async fn cancel(
        conn: &mut PgConnection,
        trip_id: &str,
        key: Option<&str>,
    ) -> sqlx::Result<Option<Cancelled>> {
        sqlx::query_as!(
            Cancelled,
            r#"WITH done AS (
                   INSERT INTO flights.reservations (trip_id, booking_id, status)
                   VALUES ($1, $2, 'cancelled')
                   ON CONFLICT (trip_id) DO UPDATE SET status = 'cancelled', updated_at = now()
                       WHERE reservations.status <> 'cancelled'
                   RETURNING flights.answer(reservations) AS body, reservations.xmax = 0 AS tombstone),
               kept AS (
                   INSERT INTO flights.idempotency_keys (key, status, body)
                   SELECT $3, 200, body FROM done WHERE $3::text IS NOT NULL)
               SELECT body AS "body!", tombstone AS "tombstone!" FROM done"#,
            trip_id,
            Uuid::new_v4(),
            key,
        )
        .fetch_optional(conn)
        .await
    }

    async fn find(conn: &mut PgConnection, trip_id: &str) -> sqlx::Result<Option<Found>> {
        sqlx::query_as!(
            Found,
            r#"SELECT status AS "status: BookingStatus", booking_id,
                      flights.answer(reservations) AS "body!"
               FROM flights.reservations WHERE trip_id = $1"#,
            trip_id,
        )
        .fetch_optional(conn)
        .await
    }
}
