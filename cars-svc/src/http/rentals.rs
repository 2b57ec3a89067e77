//! Car rentals: the `cars.rentals` table behind the booking
//! rules of [`common::booking`] (reserve, confirm, cancel, read one). Every
//! answer is built by `cars.answer` (migration 0003).

use common::booking::{Bookings, Cancelled, Found};
use common::wire::{BookingStatus, CarRequest, RunType};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// cars-svc's bookings.
#[derive(Debug)]
pub struct Cars;

impl Bookings for Cars {
    type Request = CarRequest;
    type Booking = common::wire::CarRental;

    const SERVICE: &'static str = "cars-svc";
    const TAG: &'static str = "cars";
    const NOUN: &'static str = "car rental";
    const CANCELLED: &'static str = "rental_cancelled";
    const KEYS: &'static str = "cars.idempotency_keys";
    const FAIL_RESERVE: RunType = RunType::FailCarRentalReservation;
    const FAIL_CONFIRM: RunType = RunType::FailCarRentalConfirmation;

    fn trip_id(req: &CarRequest) -> &str {
        &req.trip_id
    }

    fn run_type(req: &CarRequest) -> RunType {
        req.run_type
    }

    async fn reserve(
        conn: &mut PgConnection,
        req: &CarRequest,
        key: Option<&str>,
    ) -> sqlx::Result<Option<Value>> {
        sqlx::query_scalar!(
            r#"WITH done AS (
                   INSERT INTO cars.rentals
                       (trip_id, booking_id, status, rental, rental_from, rental_to)
                   VALUES ($1, $2, 'pending', $3, $4, $5)
                   ON CONFLICT (trip_id) DO NOTHING
                   RETURNING cars.answer(rentals) AS body),
               kept AS (
                   INSERT INTO cars.idempotency_keys (key, status, body)
                   SELECT $6, 200, body FROM done WHERE $6::text IS NOT NULL)
               SELECT body AS "body!" FROM done"#,
            req.trip_id,
            Uuid::new_v4(),
            req.rental,
            req.rental_from,
            req.rental_to,
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
                   UPDATE cars.rentals SET status = 'confirmed', updated_at = now()
                   WHERE trip_id = $1 AND status = 'pending' AND ($2::uuid IS NULL OR booking_id = $2)
                   RETURNING cars.answer(rentals) AS body),
               kept AS (
                   INSERT INTO cars.idempotency_keys (key, status, body)
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
                   INSERT INTO cars.rentals (trip_id, booking_id, status)
                   VALUES ($1, $2, 'cancelled')
                   ON CONFLICT (trip_id) DO UPDATE SET status = 'cancelled', updated_at = now()
                       WHERE rentals.status <> 'cancelled'
                   RETURNING cars.answer(rentals) AS body, rentals.xmax = 0 AS tombstone),
               kept AS (
                   INSERT INTO cars.idempotency_keys (key, status, body)
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
                      cars.answer(rentals) AS "body!"
               FROM cars.rentals WHERE trip_id = $1"#,
            trip_id,
        )
        .fetch_optional(conn)
        .await
    }
}
