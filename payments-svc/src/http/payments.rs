//! Payments: charge, refund, and read one.
//!
//! The state rules: charge returns the trip's charged row and refuses a
//! refunded one (409); refund succeeds from every state, and for a trip never
//! charged writes a tombstone that refuses a late charge.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use common::extract::{Json, Path};
use common::idempotency::{self, Answer, Key, to_answer};
use common::wire::{ActionRequest, Payment, PaymentRequest, PaymentStatus, RunType};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Error, Result};
use crate::AppState;

/// Where this service keeps its idempotency keys.
const KEYS: &str = "payments.idempotency_keys";

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/payments", post(charge))
        .route("/payments/{trip_id}", get(show))
        .route("/payments/{trip_id}/refund", post(refund))
}

fn check_trip_id(trip_id: &str) -> Result<()> {
    common::wire::validate_trip_id(trip_id).map_err(Error::InvalidTripId)
}

#[tracing::instrument(skip_all, fields(trip_id = %req.trip_id), err(level = "info"))]
async fn charge(
    State(pool): State<PgPool>,
    key: Key,
    Json(req): Json<PaymentRequest>,
) -> Result<Answer> {
    check_trip_id(&req.trip_id)?;
    common::wire::validate_payment(req.amount, &req.currency).map_err(Error::InvalidPayment)?;
    if req.run_type == RunType::FailPayment {
        return Err(Error::Injected {
            run_type: req.run_type,
            action: "the payment",
        });
    }
    idempotency::once(&pool, KEYS, key, move |conn| {
        Box::pin(async move { to_answer(charge_row(conn, &req).await) })
    })
    .await
}

async fn charge_row(conn: &mut PgConnection, req: &PaymentRequest) -> Result<Payment> {
    let inserted = sqlx::query_as!(
        Payment,
        r#"INSERT INTO payments.payments
               (trip_id, payment_id, status, amount, currency, flight_booking_id, car_booking_id)
           VALUES ($1, $2, 'charged', $3, $4, $5, $6)
           ON CONFLICT (trip_id) DO NOTHING
           RETURNING trip_id, payment_id, status AS "status: PaymentStatus",
                     amount, currency, flight_booking_id, car_booking_id"#,
        req.trip_id,
        Uuid::new_v4(),
        req.amount,
        req.currency,
        req.flight_booking_id,
        req.car_booking_id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(payment) = inserted {
        return Ok(payment);
    }
    // The trip has a row already: a replay, or a charge after a refund.
    let existing = find(conn, &req.trip_id)
        .await?
        .ok_or_else(|| Error::NotFound(req.trip_id.clone()))?;
    match existing.status {
        PaymentStatus::Refunded => Err(Error::Refunded(req.trip_id.clone())),
        PaymentStatus::Charged => Ok(existing),
    }
}

#[tracing::instrument(skip_all, fields(%trip_id), err(level = "info"))]
async fn show(State(pool): State<PgPool>, Path(trip_id): Path<String>) -> Result<Json<Payment>> {
    check_trip_id(&trip_id)?;
    let mut conn = pool.acquire().await?;
    find(&mut conn, &trip_id)
        .await?
        .map(Json)
        .ok_or(Error::NotFound(trip_id))
}

#[tracing::instrument(skip_all, fields(%trip_id), err(level = "info"))]
async fn refund(
    State(pool): State<PgPool>,
    Path(trip_id): Path<String>,
    key: Key,
    Json(_req): Json<ActionRequest>,
) -> Result<Answer> {
    check_trip_id(&trip_id)?;
    idempotency::once(&pool, KEYS, key, move |conn| {
        Box::pin(async move { to_answer(refund_row(conn, trip_id).await) })
    })
    .await
}

/// Refund never fails for business reasons: it refunds whatever is there,
/// or leaves a tombstone for a trip never charged.
async fn refund_row(conn: &mut PgConnection, trip_id: String) -> Result<Payment> {
    let refunded = sqlx::query_as!(
        Payment,
        r#"INSERT INTO payments.payments (trip_id, payment_id, status)
           VALUES ($1, $2, 'refunded')
           ON CONFLICT (trip_id) DO UPDATE SET status = 'refunded', updated_at = now()
               WHERE payments.status <> 'refunded'
           RETURNING trip_id, payment_id, status AS "status: PaymentStatus",
                     amount, currency, flight_booking_id, car_booking_id"#,
        trip_id,
        Uuid::new_v4(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    match refunded {
        Some(payment) => Ok(payment),
        None => find(conn, &trip_id).await?.ok_or(Error::NotFound(trip_id)),
    }
}

async fn find(conn: &mut PgConnection, trip_id: &str) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as!(
        Payment,
        r#"SELECT trip_id, payment_id, status AS "status: PaymentStatus",
                  amount, currency, flight_booking_id, car_booking_id
           FROM payments.payments WHERE trip_id = $1"#,
        trip_id,
    )
    .fetch_optional(conn)
    .await
}
