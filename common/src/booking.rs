//! A booking participant (flights-svc, cars-svc): reserve, confirm and
//! cancel, with the state rules and their answers written once. Each service
//! gives its table's SQL through [`Bookings`]; this module does the rest.
//!
//! The rules: reserve returns the trip's pending or confirmed row and refuses
//! a cancelled one (409); confirm moves pending to confirmed, keeps
//! confirmed, refuses cancelled (409); cancel succeeds from every state, and
//! for a trip never seen writes a tombstone. Each call's first answer is kept
//! under its `Idempotency-Key`, in the same transaction as its effect.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::Db;
use crate::error::ErrorBody;
use crate::extract::{Json, Path};
use crate::idempotency::{self, Answer, BusinessError, Key, to_answer};
use crate::metrics::ParticipantMetrics;
use crate::wire::{ActionRequest, BookingStatus, RunType};

/// The trip's booking as the rules need it, and as the API answers it.
#[derive(Debug)]
pub struct Found {
    pub status: BookingStatus,
    pub booking_id: Uuid,
    /// Built by the service's SQL function, as every answer carrying a
    /// booking is.
    pub body: Value,
}

/// A cancel (or refund) that changed a row: the answer, and whether the row
/// is a tombstone it wrote for a trip never seen (PostgreSQL's `xmax = 0`:
/// the upsert inserted).
#[derive(Debug)]
pub struct Cancelled {
    pub body: Value,
    pub tombstone: bool,
}

/// Runs a keyed cancel (refund): `first` the one-statement way and, when
/// it does not apply, `effect` (which reports a tombstone it wrote in
/// `wrote`); counts a tombstone that was written, not one undone by a
/// replay.
pub async fn cancel_call<E>(
    db: &Db,
    metrics: &ParticipantMetrics,
    table: &'static str,
    key: Key,
    first: impl AsyncFnOnce(&mut PgConnection, Option<&str>) -> sqlx::Result<Option<Cancelled>>,
    effect: impl AsyncFnOnce(&mut PgConnection, &AtomicBool) -> Result<Answer, E>,
) -> Result<Answer, E>
where
    E: From<sqlx::Error>,
{
    let wrote = AtomicBool::new(false);
    let called = idempotency::call(
        db,
        metrics,
        table,
        key,
        async |conn, key| {
            let cancelled = first(conn, key).await?;
            Ok(cancelled.map(|c| {
                wrote.store(c.tombstone, Ordering::Relaxed);
                c.body
            }))
        },
        async |tx| effect(tx, &wrote).await,
    )
    .await?;
    if wrote.load(Ordering::Relaxed) && !called.replayed {
        metrics.tombstones.inc();
    }
    Ok(called.answer)
}

/// What a booking service supplies: its names, its request, and the four
/// statements on its table. Each write answers the booking as the API
/// shows it (built by the service's SQL function), and stores that answer
/// under `key`, when there is one, in the same statement: a first call is
/// one round trip and one commit. The key's insert fails with a unique
/// violation when the key is taken, which undoes the statement.
pub trait Bookings: Send + Sync + 'static {
    /// The reserve body.
    type Request: DeserializeOwned + utoipa::ToSchema + Send + Sync + 'static;
    /// The booking as every route answers it, for the API's document (the
    /// answers themselves are built by the service's SQL).
    type Booking: utoipa::ToSchema;

    /// The service's name, for messages: `flights-svc`.
    const SERVICE: &'static str;
    /// The API document's tag and operation id suffix: `flights`.
    const TAG: &'static str;
    /// What one row is, for messages: `flight reservation`.
    const NOUN: &'static str;
    /// The error code of a refused transition: `reservation_cancelled`.
    const CANCELLED: &'static str;
    /// The schema-qualified idempotency key table.
    const KEYS: &'static str;
    /// The run types that fail reserve and confirm here.
    const FAIL_RESERVE: RunType;
    const FAIL_CONFIRM: RunType;

    fn trip_id(req: &Self::Request) -> &str;
    fn run_type(req: &Self::Request) -> RunType;

    /// Inserts a pending row, unless the trip has one: `None` then.
    fn reserve(
        conn: &mut PgConnection,
        req: &Self::Request,
        key: Option<&str>,
    ) -> impl Future<Output = sqlx::Result<Option<Value>>> + Send;
    /// Confirms the trip's pending row (of `booking_id`, if given): `None`
    /// when there is no such pending row.
    fn confirm(
        conn: &mut PgConnection,
        trip_id: &str,
        booking_id: Option<Uuid>,
        key: Option<&str>,
    ) -> impl Future<Output = sqlx::Result<Option<Value>>> + Send;
    /// Cancels the trip's row or writes a cancelled tombstone: `None` when it
    /// was cancelled already.
    fn cancel(
        conn: &mut PgConnection,
        trip_id: &str,
        key: Option<&str>,
    ) -> impl Future<Output = sqlx::Result<Option<Cancelled>>> + Send;
    fn find(
        conn: &mut PgConnection,
        trip_id: &str,
    ) -> impl Future<Output = sqlx::Result<Option<Found>>> + Send;
}

/// Whether a run type other than `success` may make this service fail on
/// purpose (the sample's failure injection). The sample allows it; the
/// production settings do not, and then such a run type is refused with a
/// 400 by reserve and confirm (never by cancel, which undoes whatever is
/// there).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct FailureInjection {
    /// Whether a runType other than success makes this service fail on
    /// purpose, as the sample asks; false refuses such a runType with 400.
    #[arg(
        long = "allow-failure-injection",
        env = "ALLOW_FAILURE_INJECTION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub allowed: bool,
}

impl Default for FailureInjection {
    fn default() -> Self {
        Self { allowed: true }
    }
}

impl FailureInjection {
    /// Refuses `run_type` (400 `failure_injection_disabled`) unless it is
    /// `success` or injection is allowed.
    pub fn check(self, service: &'static str, run_type: RunType) -> Result<()> {
        if self.allowed || run_type == RunType::Success {
            return Ok(());
        }
        Err(Error::InjectionDisabled { service, run_type })
    }
}

/// The routes of a booking service under `collection` (e.g. `/reservations`).
pub fn router<B: Bookings, S>(collection: &str) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Db: FromRef<S>,
    ParticipantMetrics: FromRef<S>,
    FailureInjection: FromRef<S>,
{
    Router::new()
        .route(collection, post(reserve::<B>))
        .route(&format!("{collection}/{{trip_id}}"), get(show::<B>))
        .route(
            &format!("{collection}/{{trip_id}}/confirm"),
            post(confirm::<B>),
        )
        .route(
            &format!("{collection}/{{trip_id}}/cancel"),
            post(cancel::<B>),
        )
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A booking service's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the trip id in the path or body is not acceptable.
    #[error("{0}")]
    InvalidTripId(String),

    /// 422: the run type asks this action to fail, as the sample's functions do.
    #[error("runType {run_type} makes {service} fail {action}")]
    Injected {
        service: &'static str,
        run_type: RunType,
        action: &'static str,
    },

    /// 400: the run type asks for a failure on purpose, and this service
    /// runs with `ALLOW_FAILURE_INJECTION=false`.
    #[error(
        "runType {run_type} asks {service} to fail on purpose, and it runs with ALLOW_FAILURE_INJECTION=false"
    )]
    InjectionDisabled {
        service: &'static str,
        run_type: RunType,
    },

    /// 404: no booking for this trip.
    #[error("no {noun} for trip {trip_id}")]
    NotFound { noun: &'static str, trip_id: String },

    /// 409: the trip's booking was cancelled; it cannot be reserved or
    /// confirmed again.
    #[error("the {noun} of trip {trip_id} is cancelled")]
    Cancelled {
        noun: &'static str,
        code: &'static str,
        trip_id: String,
    },

    /// 409: confirm named a booking that is not this trip's.
    #[error("booking {given} is not trip {trip_id}'s booking ({actual})")]
    BookingMismatch {
        trip_id: String,
        given: Uuid,
        actual: Uuid,
    },

    /// 503 when the database is out (`common::db::is_outage`); otherwise 500,
    /// logged, answered opaquely.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl BusinessError for Error {
    fn answer(&self) -> Option<Answer> {
        let message = self.to_string();
        let (status, body) = match self {
            Error::InvalidTripId(_) => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_trip_id", message),
            ),
            Error::Injected { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::new(
                    "injected_failure",
                    format!("{message}, as asked (injected failure); send runType success to book"),
                ),
            ),
            Error::InjectionDisabled { .. } => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new(
                    "failure_injection_disabled",
                    format!("{message}; send runType success"),
                ),
            ),
            Error::NotFound { .. } => (
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", format!("{message}; reserve it first")),
            ),
            Error::Cancelled { code, .. } => (
                StatusCode::CONFLICT,
                ErrorBody::new(
                    *code,
                    format!("{message}; book the trip under a new trip id"),
                ),
            ),
            Error::BookingMismatch { .. } => (
                StatusCode::CONFLICT,
                ErrorBody::new(
                    "booking_mismatch",
                    format!("{message}; send the trip's own booking id"),
                ),
            ),
            Error::Database(_) => return None,
        };
        Some(Answer::error(status, body))
    }

    fn database(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Database(err) => Some(err),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.respond()
    }
}

fn check_trip_id(trip_id: &str) -> Result<()> {
    crate::wire::validate_trip_id(trip_id).map_err(Error::InvalidTripId)
}

fn not_found<B: Bookings>(trip_id: &str) -> Error {
    Error::NotFound {
        noun: B::NOUN,
        trip_id: trip_id.to_owned(),
    }
}

fn cancelled<B: Bookings>(trip_id: &str) -> Error {
    Error::Cancelled {
        noun: B::NOUN,
        code: B::CANCELLED,
        trip_id: trip_id.to_owned(),
    }
}

#[tracing::instrument(skip_all, fields(service = B::SERVICE, trip_id = B::trip_id(&req)), err(level = "info"))]
async fn reserve<B: Bookings>(
    State(db): State<Db>,
    State(metrics): State<ParticipantMetrics>,
    State(injection): State<FailureInjection>,
    key: Key,
    Json(req): Json<B::Request>,
) -> Result<Answer> {
    check_trip_id(B::trip_id(&req))?;
    injection.check(B::SERVICE, B::run_type(&req))?;
    if B::run_type(&req) == B::FAIL_RESERVE {
        return Err(Error::Injected {
            service: B::SERVICE,
            run_type: B::run_type(&req),
            action: "the reservation",
        });
    }
    idempotency::call(
        &db,
        &metrics,
        B::KEYS,
        key,
        async |conn, key| B::reserve(conn, &req, key).await,
        async |tx| to_answer(reserve_row::<B>(tx, &req).await),
    )
    .await
    .map(|called| called.answer)
}

async fn reserve_row<B: Bookings>(conn: &mut PgConnection, req: &B::Request) -> Result<Value> {
    if let Some(body) = B::reserve(conn, req, None).await? {
        return Ok(body);
    }
    // The trip has a row already: a replay, or a reserve after a cancel.
    let trip_id = B::trip_id(req);
    let existing = B::find(conn, trip_id)
        .await?
        .ok_or_else(|| not_found::<B>(trip_id))?;
    match existing.status {
        BookingStatus::Cancelled => Err(cancelled::<B>(trip_id)),
        BookingStatus::Pending | BookingStatus::Confirmed => Ok(existing.body),
    }
}

#[tracing::instrument(skip_all, fields(service = B::SERVICE, ?trip_id), err(level = "info"))]
async fn show<B: Bookings>(
    State(db): State<Db>,
    Path(trip_id): Path<String>,
) -> Result<Json<Value>> {
    check_trip_id(&trip_id)?;
    db.run(async |conn| {
        B::find(conn, &trip_id)
            .await?
            .map(|found| Json(found.body))
            .ok_or_else(|| not_found::<B>(&trip_id))
    })
    .await
}

#[tracing::instrument(skip_all, fields(service = B::SERVICE, ?trip_id), err(level = "info"))]
async fn confirm<B: Bookings>(
    State(db): State<Db>,
    State(metrics): State<ParticipantMetrics>,
    State(injection): State<FailureInjection>,
    Path(trip_id): Path<String>,
    key: Key,
    Json(req): Json<ActionRequest>,
) -> Result<Answer> {
    check_trip_id(&trip_id)?;
    injection.check(B::SERVICE, req.run_type)?;
    if req.run_type == B::FAIL_CONFIRM {
        return Err(Error::Injected {
            service: B::SERVICE,
            run_type: req.run_type,
            action: "the confirmation",
        });
    }
    idempotency::call(
        &db,
        &metrics,
        B::KEYS,
        key,
        async |conn, key| B::confirm(conn, &trip_id, req.booking_id, key).await,
        async |tx| to_answer(confirm_row::<B>(tx, &trip_id, req.booking_id).await),
    )
    .await
    .map(|called| called.answer)
}

async fn confirm_row<B: Bookings>(
    conn: &mut PgConnection,
    trip_id: &str,
    booking_id: Option<Uuid>,
) -> Result<Value> {
    if let Some(body) = B::confirm(conn, trip_id, booking_id, None).await? {
        return Ok(body);
    }
    // Not pending, or not this booking: a replay, a confirm after a cancel,
    // a wrong booking id, or a trip never reserved.
    let existing = B::find(conn, trip_id)
        .await?
        .ok_or_else(|| not_found::<B>(trip_id))?;
    if let Some(given) = booking_id.filter(|id| *id != existing.booking_id) {
        return Err(Error::BookingMismatch {
            trip_id: trip_id.to_owned(),
            given,
            actual: existing.booking_id,
        });
    }
    match existing.status {
        BookingStatus::Cancelled => Err(cancelled::<B>(trip_id)),
        BookingStatus::Pending | BookingStatus::Confirmed => Ok(existing.body),
    }
}

#[tracing::instrument(skip_all, fields(service = B::SERVICE, ?trip_id), err(level = "info"))]
async fn cancel<B: Bookings>(
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
        B::KEYS,
        key,
        async |conn, key| B::cancel(conn, &trip_id, key).await,
        async |tx, wrote| to_answer(cancel_row::<B>(tx, &trip_id, wrote).await),
    )
    .await
}

/// Cancel never fails for business reasons: it cancels whatever is there,
/// or leaves a tombstone for a trip never seen (and says so in `wrote`).
async fn cancel_row<B: Bookings>(
    conn: &mut PgConnection,
    trip_id: &str,
    wrote: &AtomicBool,
) -> Result<Value> {
    match B::cancel(conn, trip_id, None).await? {
        Some(cancelled) => {
            wrote.store(cancelled.tombstone, Ordering::Relaxed);
            Ok(cancelled.body)
        }
        None => B::find(conn, trip_id)
            .await?
            .map(|found| found.body)
            .ok_or_else(|| not_found::<B>(trip_id)),
    }
}

/// The booking routes under `collection`, described: [`router`]'s
/// handlers are generic over the service, so their document is built here
/// rather than by `#[utoipa::path]`. `B::Request` and `B::Booking` name
/// schemas registered with it.
pub fn api<B: Bookings>(collection: &str) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::path::HttpMethod;

    let noun = B::NOUN;
    let request = <B::Request as utoipa::ToSchema>::name();
    let booking = <B::Booking as utoipa::ToSchema>::name();
    let item = format!("{collection}/{{trip_id}}");
    let reserve = crate::openapi::operation(
        collection,
        &format!("reserve_{}", B::TAG),
        B::TAG,
        &format!("Reserves the trip's {noun} (pending)"),
        Some(&request),
        &booking,
        &[
            (
                200,
                "The trip's booking: created pending, or the one it has",
            ),
            (
                400,
                "The trip id is not acceptable, or the body is not JSON",
            ),
            (409, "The trip's booking is cancelled"),
            (415, "The body is not sent as application/json"),
            (
                422,
                "The body does not fit the schema, or runType fails this step on purpose",
            ),
            (503, "The database is unreachable; retry"),
        ],
    );
    let show = crate::openapi::operation(
        &item,
        &format!("show_{}", B::TAG),
        B::TAG,
        &format!("The trip's {noun}"),
        None,
        &booking,
        &[
            (200, "The trip's booking"),
            (400, "The trip id is not acceptable"),
            (404, "No booking for the trip"),
            (503, "The database is unreachable; retry"),
        ],
    );
    let confirm = crate::openapi::operation(
        &format!("{item}/confirm"),
        &format!("confirm_{}", B::TAG),
        B::TAG,
        &format!("Confirms the trip's pending {noun}"),
        Some("ActionRequest"),
        &booking,
        &[
            (200, "The booking, confirmed"),
            (
                400,
                "The trip id is not acceptable, or the body is not JSON",
            ),
            (404, "No booking for the trip"),
            (
                409,
                "The booking is cancelled, or booking_id is another booking's",
            ),
            (415, "The body is not sent as application/json"),
            (
                422,
                "The body does not fit the schema, or runType fails this step on purpose",
            ),
            (503, "The database is unreachable; retry"),
        ],
    );
    let cancel = crate::openapi::operation(
        &format!("{item}/cancel"),
        &format!("cancel_{}", B::TAG),
        B::TAG,
        &format!(
            "Cancels the trip's {noun}; for a trip never seen, leaves a tombstone so that a late reserve is refused"
        ),
        Some("ActionRequest"),
        &booking,
        &[
            (
                200,
                "The booking, cancelled (a tombstone's trip fields are null)",
            ),
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
    crate::openapi::schema::<B::Request>(&mut schemas);
    crate::openapi::schema::<B::Booking>(&mut schemas);
    crate::openapi::schema::<crate::wire::ActionRequest>(&mut schemas);
    crate::openapi::document(
        vec![
            (collection.to_owned(), HttpMethod::Post, reserve),
            (item.clone(), HttpMethod::Get, show),
            (format!("{item}/confirm"), HttpMethod::Post, confirm),
            (format!("{item}/cancel"), HttpMethod::Post, cancel),
        ],
        schemas,
    )
}
