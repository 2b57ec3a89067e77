//! Flight reservations: reserve, confirm, cancel, and read one.
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
use common::wire::{ActionRequest, BookingStatus, FlightRequest, FlightReservation, RunType};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Error, Result};
use crate::AppState;

/// Where this service keeps its idempotency keys.
const KEYS: &str = "flights.idempotency_keys";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/reservations", post(reserve))
        .route("/reservations/{trip_id}", get(show))
        .route("/reservations/{trip_id}/confirm", post(confirm))
        .route("/reservations/{trip_id}/cancel", post(cancel))
}

fn check_trip_id(trip_id: &str) -> Result<()> {
    common::wire::validate_trip_id(trip_id).map_err(Error::InvalidTripId)
}

#[tracing::instrument(skip_all, fields(trip_id = %req.trip_id), err(level = "info"))]
async fn reserve(
    State(pool): State<PgPool>,
    key: Key,
    Json(req): Json<FlightRequest>,
) -> Result<Answer> {
    check_trip_id(&req.trip_id)?;
    if req.run_type == RunType::FailFlightsReservation {
        return Err(Error::Injected {
            run_type: req.run_type,
            action: "the reservation",
        });
    }
    idempotency::once(&pool, KEYS, key, move |conn| {
        Box::pin(async move { to_answer(reserve_row(conn, &req).await) })
    })
    .await
}

async fn reserve_row(conn: &mut PgConnection, req: &FlightRequest) -> Result<FlightReservation> {
    let inserted = sqlx::query_as!(
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
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(reservation) = inserted {
        return Ok(reservation);
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
async fn show(
    State(pool): State<PgPool>,
    Path(trip_id): Path<String>,
) -> Result<Json<FlightReservation>> {
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
    if req.run_type == RunType::FailFlightsConfirmation {
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
) -> Result<FlightReservation> {
    let confirmed = sqlx::query_as!(
        FlightReservation,
        r#"UPDATE flights.reservations SET status = 'confirmed', updated_at = now()
           WHERE trip_id = $1 AND status = 'pending' AND ($2::uuid IS NULL OR booking_id = $2)
           RETURNING trip_id, booking_id, status AS "status: BookingStatus",
                     depart_city, depart_time, arrive_city, arrive_time"#,
        trip_id,
        booking_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(reservation) = confirmed {
        return Ok(reservation);
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
async fn cancel_row(conn: &mut PgConnection, trip_id: String) -> Result<FlightReservation> {
    let cancelled = sqlx::query_as!(
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
    .fetch_optional(&mut *conn)
    .await?;
    match cancelled {
        Some(reservation) => Ok(reservation),
        None => find(conn, &trip_id).await?.ok_or(Error::NotFound(trip_id)),
    }
}

async fn find(
    conn: &mut PgConnection,
    trip_id: &str,
) -> Result<Option<FlightReservation>, sqlx::Error> {
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
