//! Payments: charge, refund, and read one.
//!
//! The state rules: charge returns the trip's charged row and refuses a
//! refunded one (409); refund succeeds from every state, and for a trip never
//! charged writes a tombstone that refuses a late charge.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use common::booking::{Cancelled, FailureInjection, cancel_call};
use common::db::Db;
use common::extract::{Json, Path};
use common::idempotency::{self, Answer, Key, to_answer};
use common::metrics::ParticipantMetrics;
use common::wire::{ActionRequest, PaymentRequest, PaymentStatus, RunType};
use serde_json::Value;
use sqlx::PgConnection;
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

/// [`router`]'s routes, described.
pub(crate) fn api() -> utoipa::openapi::OpenApi {
    use common::openapi::operation;
    use utoipa::openapi::path::HttpMethod;

    let charge = operation(
        "/payments",
        "charge",
        "payments",
        "Charges the trip, naming the bookings the earlier steps made",
        Some("PaymentRequest"),
        "Payment",
        &[
            (200, "The trip's payment: charged now, or the one it has"),
            (
                400,
                "The trip id is not acceptable, or the body is not JSON",
            ),
            (409, "The trip's payment is refunded"),
            (415, "The body is not sent as application/json"),
            (
                422,
                "The body does not fit the schema, the amount or currency is not acceptable, or runType fails the payment on purpose",
            ),
            (503, "The database is unreachable; retry"),
        ],
    );
    let show = operation(
        "/payments/{trip_id}",
        "show_payment",
        "payments",
        "The trip's payment",
        None,
        "Payment",
        &[
            (200, "The trip's payment"),
            (400, "The trip id is not acceptable"),
            (404, "No payment for the trip"),
            (503, "The database is unreachable; retry"),
        ],
    );
    let refund = operation(
        "/payments/{trip_id}/refund",
        "refund",
        "payments",
        "Refunds the trip's payment; for a trip never charged, leaves a tombstone so that a late charge is refused",
        Some("ActionRequest"),
        "Payment",
        &[
            (200, "The payment, refunded (a tombstone's fields are null)"),
            (
                400,
                "The trip id is not acceptable, or the body is not JSON",
            ),
            (415, "The body is not sent as application/json"),
            (422, "The body does not fit the schema"),
            (503, "The database is unreachable; retry"),
        ],
    );
    let mut schemas = Vec::new();
    common::openapi::schema::<PaymentRequest>(&mut schemas);
    common::openapi::schema::<common::wire::Payment>(&mut schemas);
    common::openapi::schema::<ActionRequest>(&mut schemas);
    common::openapi::document(
        vec![
            ("/payments".into(), HttpMethod::Post, charge),
            ("/payments/{trip_id}".into(), HttpMethod::Get, show),
            (
                "/payments/{trip_id}/refund".into(),
                HttpMethod::Post,
                refund,
            ),
        ],
        schemas,
    )
}

fn check_trip_id(trip_id: &str) -> Result<()> {
    common::wire::validate_trip_id(trip_id).map_err(Error::InvalidTripId)
}

#[tracing::instrument(skip_all, fields(trip_id = ?req.trip_id), err(level = "info"))]
async fn charge(
    State(db): State<Db>,
    State(metrics): State<ParticipantMetrics>,
    State(injection): State<FailureInjection>,
    key: Key,
    Json(req): Json<PaymentRequest>,
) -> Result<Answer> {
    check_trip_id(&req.trip_id)?;
    injection
        .check("payments-svc", req.run_type)
        .map_err(Error::InjectionDisabled)?;
    common::wire::validate_payment(req.amount, &req.currency).map_err(Error::InvalidPayment)?;
    if req.run_type == RunType::FailPayment {
        return Err(Error::Injected {
            run_type: req.run_type,
            action: "the payment",
        });
    }
    idempotency::call(
        &db,
        &metrics,
        KEYS,
        key,
        async |conn, key| insert_charged(conn, &req, key).await,
        async |tx| to_answer(charge_row(tx, &req).await),
    )
    .await
    .map(|called| called.answer)
}

/// Inserts the charged row unless the trip has one (`None` then), and stores
/// its answer under `key`, in one statement.
async fn insert_charged(
    conn: &mut PgConnection,
    req: &PaymentRequest,
    key: Option<&str>,
) -> sqlx::Result<Option<Value>> {
    sqlx::query_scalar!(
        r#"WITH done AS (
               INSERT INTO payments.payments
                   (trip_id, payment_id, status, amount, currency, flight_booking_id, car_booking_id)
               VALUES ($1, $2, 'charged', $3, $4, $5, $6)
               ON CONFLICT (trip_id) DO NOTHING
               RETURNING payments.answer(payments) AS body),
           kept AS (
               INSERT INTO payments.idempotency_keys (key, status, body)
               SELECT $7, 200, body FROM done WHERE $7::text IS NOT NULL)
           SELECT body AS "body!" FROM done"#,
        req.trip_id,
        Uuid::new_v4(),
        req.amount,
        req.currency,
        req.flight_booking_id,
        req.car_booking_id,
        key,
    )
    .fetch_optional(conn)
    .await
}

async fn charge_row(conn: &mut PgConnection, req: &PaymentRequest) -> Result<Value> {
    if let Some(body) = insert_charged(conn, req, None).await? {
        return Ok(body);
    }
    // The trip has a row already: a replay, or a charge after a refund.
    let existing = find(conn, &req.trip_id)
        .await?
        .ok_or_else(|| Error::NotFound(req.trip_id.clone()))?;
    match existing.status {
        PaymentStatus::Refunded => Err(Error::Refunded(req.trip_id.clone())),
        PaymentStatus::Charged => Ok(existing.body),
    }
}

#[tracing::instrument(skip_all, fields(?trip_id), err(level = "info"))]
async fn show(State(db): State<Db>, Path(trip_id): Path<String>) -> Result<Json<Value>> {
    check_trip_id(&trip_id)?;
    db.run(async |conn| {
        find(conn, &trip_id)
            .await?
            .map(|found| Json(found.body))
            .ok_or(Error::NotFound(trip_id))
    })
    .await
}

#[tracing::instrument(skip_all, fields(?trip_id), err(level = "info"))]
async fn refund(
    State(db): State<Db>,
    State(metrics): State<ParticipantMetrics>,
    Path(trip_id): Path<String>,
    key: Key,
    Json(_req): Json<ActionRequest>,
) -> Result<Answer> {
    check_trip_id(&trip_id)?;
    cancel_call(
        &db,
        &metrics,
        KEYS,
        key,
        async |conn, key| refund_any(conn, &trip_id, key).await,
        async |tx, wrote| to_answer(refund_row(tx, &trip_id, wrote).await),
    )
    .await
}

/// Refunds the trip's payment or writes a refunded tombstone, and stores its
/// answer under `key`, in one statement: `None` when it was refunded already.
async fn refund_any(
    conn: &mut PgConnection,
    trip_id: &str,
    key: Option<&str>,
) -> sqlx::Result<Option<Cancelled>> {
    sqlx::query_as!(
        Cancelled,
        r#"WITH done AS (
               INSERT INTO payments.payments (trip_id, payment_id, status)
               VALUES ($1, $2, 'refunded')
               ON CONFLICT (trip_id) DO UPDATE SET status = 'refunded', updated_at = now()
                   WHERE payments.status <> 'refunded'
               RETURNING payments.answer(payments) AS body, payments.xmax = 0 AS tombstone),
           kept AS (
               INSERT INTO payments.idempotency_keys (key, status, body)
               SELECT $3, 200, body FROM done WHERE $3::text IS NOT NULL)
           SELECT body AS "body!", tombstone AS "tombstone!" FROM done"#,
        trip_id,
        Uuid::new_v4(),
        key,
    )
    .fetch_optional(conn)
    .await
}

/// Refund never fails for business reasons: it refunds whatever is there,
/// or leaves a tombstone for a trip never charged.
async fn refund_row(conn: &mut PgConnection, trip_id: &str, wrote: &AtomicBool) -> Result<Value> {
    match refund_any(conn, trip_id, None).await? {
        Some(refunded) => {
            wrote.store(refunded.tombstone, Ordering::Relaxed);
            Ok(refunded.body)
        }
        None => find(conn, trip_id)
            .await?
            .map(|found| found.body)
            .ok_or_else(|| Error::NotFound(trip_id.to_owned())),
    }
}

/// The trip's payment as the rules need it, and as the API answers it.
struct Found {
    status: PaymentStatus,
    body: Value,
}

async fn find(conn: &mut PgConnection, trip_id: &str) -> Result<Option<Found>, sqlx::Error> {
    sqlx::query_as!(
        Found,
        r#"SELECT status AS "status: PaymentStatus", payments.answer(payments) AS "body!"
           FROM payments.payments WHERE trip_id = $1"#,
        trip_id,
    )
    .fetch_optional(conn)
    .await
}
