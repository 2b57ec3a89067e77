//! Car rentals: the `cars.rentals` table behind the booking
//! rules of [`common::booking`] (reserve, confirm, cancel, read one).

use common::booking::Bookings;
use common::wire::{BookingStatus, CarRental, CarRequest, RunType};
use sqlx::PgConnection;
use uuid::Uuid;

/// cars-svc's bookings.
#[derive(Debug)]
pub struct Cars;

impl Bookings for Cars {
    type Request = CarRequest;
    type Row = CarRental;

    const SERVICE: &'static str = "cars-svc";
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

    async fn insert_pending(
        conn: &mut PgConnection,
        req: &CarRequest,
    ) -> sqlx::Result<Option<CarRental>> {
        sqlx::query_as!(
            CarRental,
            r#"INSERT INTO cars.rentals
                   (trip_id, booking_id, status, rental, rental_from, rental_to)
               VALUES ($1, $2, 'pending', $3, $4, $5)
               ON CONFLICT (trip_id) DO NOTHING
               RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                         rental, rental_from, rental_to"#,
            req.trip_id,
            Uuid::new_v4(),
            req.rental,
            req.rental_from,
            req.rental_to,
        )
        .fetch_optional(conn)
        .await
    }

    async fn confirm_pending(
        conn: &mut PgConnection,
        trip_id: &str,
        booking_id: Option<Uuid>,
    ) -> sqlx::Result<Option<CarRental>> {
        sqlx::query_as!(
            CarRental,
            r#"UPDATE cars.rentals SET status = 'confirmed', updated_at = now()
               WHERE trip_id = $1 AND status = 'pending' AND ($2::uuid IS NULL OR booking_id = $2)
               RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                         rental, rental_from, rental_to"#,
            trip_id,
            booking_id,
        )
        .fetch_optional(conn)
        .await
    }

    async fn cancel(conn: &mut PgConnection, trip_id: &str) -> sqlx::Result<Option<CarRental>> {
        sqlx::query_as!(
            CarRental,
            r#"INSERT INTO cars.rentals (trip_id, booking_id, status)
               VALUES ($1, $2, 'cancelled')
               ON CONFLICT (trip_id) DO UPDATE SET status = 'cancelled', updated_at = now()
                   WHERE rentals.status <> 'cancelled'
               RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                         rental, rental_from, rental_to"#,
            trip_id,
            Uuid::new_v4(),
        )
        .fetch_optional(conn)
        .await
    }

    async fn find(conn: &mut PgConnection, trip_id: &str) -> sqlx::Result<Option<CarRental>> {
        sqlx::query_as!(
            CarRental,
            r#"SELECT trip_id, booking_id, status AS "status: BookingStatus",
                      rental, rental_from, rental_to
               FROM cars.rentals WHERE trip_id = $1"#,
            trip_id,
        )
        .fetch_optional(conn)
        .await
    }
}
