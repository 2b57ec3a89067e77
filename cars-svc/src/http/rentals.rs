//! Car rentals: reserve, confirm, cancel, and read one.
//!
//! The state rules: reserve returns the trip's pending or confirmed row and
//! refuses a cancelled one (409); confirm moves pending to confirmed, keeps
//! confirmed, refuses cancelled (409); cancel succeeds from every state, and
//! for a trip never seen writes a tombstone. Each call's first answer is kept
//! under its `Idempotency-Key`, in the same transaction as its effect.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use common::extract::{Json, Path};
use common::idempotency::{self, Answer, Key, to_answer};
use common::wire::{ActionRequest, BookingStatus, CarRental, CarRequest, RunType};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Error, Result};
use crate::AppState;

/// Where this service keeps its idempotency keys.
const KEYS: &str = "cars.idempotency_keys";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/rentals", post(reserve))
        .route("/rentals/{trip_id}", get(show))
        .route("/rentals/{trip_id}/confirm", post(confirm))
        .route("/rentals/{trip_id}/cancel", post(cancel))
}

fn check_trip_id(trip_id: &str) -> Result<()> {
    common::wire::validate_trip_id(trip_id).map_err(Error::InvalidTripId)
}

#[tracing::instrument(skip_all, fields(trip_id = %req.trip_id), err(level = "info"))]
async fn reserve(
    State(pool): State<PgPool>,
    key: Key,
    Json(req): Json<CarRequest>,
) -> Result<Answer> {
    check_trip_id(&req.trip_id)?;
    if req.run_type == RunType::FailCarRentalReservation {
        return Err(Error::Injected {
            run_type: req.run_type,
            action: "the rental",
        });
    }
    idempotency::once(&pool, KEYS, key, move |conn| {
        Box::pin(async move { to_answer(reserve_row(conn, &req).await) })
    })
    .await
}

async fn reserve_row(conn: &mut PgConnection, req: &CarRequest) -> Result<CarRental> {
    let inserted = sqlx::query_as!(
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
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(rental) = inserted {
        return Ok(rental);
    }
    // The trip has a row already: a replay, or a reserve after a cancel.
    let existing = find(conn, &req.trip_id)
        .await?
        .ok_or_else(|| Error::NotFound(req.trip_id.clone()))?;
    match existing.status {
        BookingStatus::Cancelled => Err(Error::Cancelled(req.trip_id.clone())),
        BookingStatus::Pending | BookingStatus::Confirmed => Ok(existing),
    }
}

#[tracing::instrument(skip_all, fields(%trip_id), err(level = "info"))]
async fn show(State(pool): State<PgPool>, Path(trip_id): Path<String>) -> Result<Json<CarRental>> {
    check_trip_id(&trip_id)?;
    let mut conn = pool.acquire().await?;
    find(&mut conn, &trip_id)
        .await?
        .map(Json)
        .ok_or(Error::NotFound(trip_id))
}

#[tracing::instrument(skip_all, fields(%trip_id), err(level = "info"))]
async fn confirm(
    State(pool): State<PgPool>,
    Path(trip_id): Path<String>,
    key: Key,
    Json(req): Json<ActionRequest>,
) -> Result<Answer> {
    check_trip_id(&trip_id)?;
    if req.run_type == RunType::FailCarRentalConfirmation {
        return Err(Error::Injected {
            run_type: req.run_type,
            action: "the confirmation",
        });
    }
    idempotency::once(&pool, KEYS, key, move |conn| {
        Box::pin(async move { to_answer(confirm_row(conn, trip_id, req.booking_id).await) })
    })
    .await
}

async fn confirm_row(
    conn: &mut PgConnection,
    trip_id: String,
    booking_id: Option<Uuid>,
) -> Result<CarRental> {
    let confirmed = sqlx::query_as!(
        CarRental,
        r#"UPDATE cars.rentals SET status = 'confirmed', updated_at = now()
           WHERE trip_id = $1 AND status = 'pending' AND ($2::uuid IS NULL OR booking_id = $2)
           RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                     rental, rental_from, rental_to"#,
        trip_id,
        booking_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(rental) = confirmed {
        return Ok(rental);
    }
    // Not pending, or not this booking: a replay, a confirm after a cancel,
    // a wrong booking id, or a trip never reserved.
    let existing = find(conn, &trip_id)
        .await?
        .ok_or_else(|| Error::NotFound(trip_id.clone()))?;
    if let Some(given) = booking_id.filter(|id| *id != existing.booking_id) {
        return Err(Error::BookingMismatch {
            trip_id,
            given,
            actual: existing.booking_id,
        });
    }
    match existing.status {
        BookingStatus::Cancelled => Err(Error::Cancelled(trip_id)),
        BookingStatus::Pending | BookingStatus::Confirmed => Ok(existing),
    }
}

#[tracing::instrument(skip_all, fields(%trip_id), err(level = "info"))]
async fn cancel(
    State(pool): State<PgPool>,
    Path(trip_id): Path<String>,
    key: Key,
    Json(_req): Json<ActionRequest>,
) -> Result<Answer> {
    check_trip_id(&trip_id)?;
    idempotency::once(&pool, KEYS, key, move |conn| {
        Box::pin(async move { to_answer(cancel_row(conn, trip_id).await) })
    })
    .await
}

/// Cancel never fails for business reasons: it cancels whatever is there,
/// or leaves a tombstone for a trip never seen.
async fn cancel_row(conn: &mut PgConnection, trip_id: String) -> Result<CarRental> {
    let cancelled = sqlx::query_as!(
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
    .fetch_optional(&mut *conn)
    .await?;
    match cancelled {
        Some(rental) => Ok(rental),
        None => find(conn, &trip_id).await?.ok_or(Error::NotFound(trip_id)),
    }
}

async fn find(conn: &mut PgConnection, trip_id: &str) -> Result<Option<CarRental>, sqlx::Error> {
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
