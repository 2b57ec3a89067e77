//! The sample's API, as it always was: start a trip (`GET /trip`, the
//! sample's entry point, and `POST /trips`), read one (`GET /trips/{trip_id}`),
//! list them (`GET /trips`). Thin routes onto the `travel` definition: the
//! trip id is the saga's id, the other fields its input.

use axum::extract::State;
use axum::response::Response;
use common::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sagas::{self, ListQuery, Page};
use super::{ClientAddr, Error, ErrorBody, Result};
use crate::AppState;
use crate::saga::view::SagaView;
use crate::travel::{self, TripInput};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(trip_get))
        .routes(routes!(list, trip_post))
        .routes(routes!(show))
}

/// A travel saga as the sample's API shows it: the saga, with its trip id
/// and run type first.
#[derive(Debug, Serialize, ToSchema)]
struct TripView<'a> {
    trip_id: &'a str,
    run_type: Option<&'a str>,
    #[serde(flatten)]
    #[schema(value_type = SagaView)]
    saga: &'a SagaView,
}

impl<'a> From<&'a SagaView> for TripView<'a> {
    fn from(saga: &'a SagaView) -> Self {
        Self {
            trip_id: &saga.id,
            run_type: saga.input.get("run_type").and_then(|r| r.as_str()),
            saga,
        }
    }
}

/// `GET /trip` parameters, named as in the sample.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TripQuery {
    /// Which participant action fails on purpose: `success` (default),
    /// `failFlightsReservation`, `failCarRentalReservation`, `failPayment`,
    /// `failFlightsConfirmation`, `failCarRentalConfirmation`.
    #[serde(rename = "runType")]
    run_type: Option<String>,
    /// The trip's id; default: a new UUID. The same id and run type join
    /// the trip.
    #[serde(rename = "tripID")]
    trip_id: Option<String>,
    /// Seconds to wait for the trip to end before answering 202 (0 to 60).
    #[param(value_type = Option<u64>)]
    wait: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// Seconds to wait for the trip to end before answering 202 (0 to 60).
    #[param(value_type = Option<u64>)]
    wait: Option<String>,
}

/// Books a trip, the sample's way: the `travel` saga with its defaults.
#[utoipa::path(get, path = "/trip", tag = "trips",
    params(TripQuery),
    responses(
        (status = 200, description = "The trip's saga has ended", body = TripView),
        (status = 202, description = "The trip's saga runs; Location names it", body = TripView),
        (status = 400, description = "A parameter is not acceptable", body = ErrorBody),
        (status = 409, description = "The trip id is taken by another trip", body = ErrorBody),
        (status = 429, description = "This client sent more starts than START_RATE_PER_CLIENT (Retry-After)", body = ErrorBody),
        (status = 503, description = "No slot for a new saga (Retry-After), or the database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(trip_id = query.trip_id, run_type = query.run_type))]
async fn trip_get(
    State(state): State<AppState>,
    client: ClientAddr,
    Query(query): Query<TripQuery>,
) -> Result<Response> {
    state.take_start(&client)?;
    let wait = state.wait(query.wait.as_deref())?;
    let input = TripInput {
        trip_id: query.trip_id,
        run_type: query.run_type,
        ..TripInput::default()
    };
    start_or_join(&state, input, wait).await
}

/// Books a trip with fields of its own (the others: the defaults).
#[utoipa::path(post, path = "/trips", tag = "trips",
    params(WaitQuery),
    request_body = TripInput,
    responses(
        (status = 200, description = "The trip's saga has ended", body = TripView),
        (status = 202, description = "The trip's saga runs; Location names it", body = TripView),
        (status = 400, description = "A field or parameter is not acceptable, or the body is not JSON", body = ErrorBody),
        (status = 409, description = "The trip id is taken by another trip", body = ErrorBody),
        (status = 415, description = "The body is not sent as application/json", body = ErrorBody),
        (status = 422, description = "The body does not fit the schema", body = ErrorBody),
        (status = 429, description = "This client sent more starts than START_RATE_PER_CLIENT (Retry-After)", body = ErrorBody),
        (status = 503, description = "No slot for a new saga (Retry-After), or the database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(trip_id = input.trip_id))]
async fn trip_post(
    State(state): State<AppState>,
    client: ClientAddr,
    Query(query): Query<WaitQuery>,
    Json(input): Json<TripInput>,
) -> Result<Response> {
    state.take_start(&client)?;
    let wait = state.wait(query.wait.as_deref())?;
    start_or_join(&state, input, wait).await
}

async fn start_or_join(
    state: &AppState,
    mut input: TripInput,
    wait: std::time::Duration,
) -> Result<Response> {
    input.deadline_secs = input.deadline_secs.or(state.default_deadline_secs);
    let trip = input.into_trip().map_err(Error::InvalidTrip)?;
    let definition = state.definition(travel::DEFINITION, None).await?;
    let input = definition
        .prepare_input(trip.input())
        .map_err(Error::InvalidTrip)?;
    let joined = sagas::start_or_join(
        state,
        definition,
        trip.trip_id,
        input,
        trip.deadline_secs,
        wait,
    )
    .await?;
    let location = format!("/trips/{}", joined.view.id);
    Ok(joined.respond(&TripView::from(&*joined.view), &location))
}

/// One trip.
#[utoipa::path(get, path = "/trips/{trip_id}", tag = "trips",
    params(("trip_id" = String, Path, description = "The trip's id")),
    responses(
        (status = 200, description = "The trip", body = TripView),
        (status = 400, description = "The trip id is not acceptable", body = ErrorBody),
        (status = 404, description = "No trip of that id", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all, fields(?trip_id))]
async fn show(State(state): State<AppState>, Path(trip_id): Path<String>) -> Result<Response> {
    common::wire::validate_trip_id(&trip_id).map_err(Error::InvalidTrip)?;
    let saga = sagas::load(&state, &trip_id)
        .await
        .map_err(|err| match err {
            Error::Missing(_) => Error::NotFound(trip_id.clone()),
            other => other,
        })?;
    if saga.definition != travel::DEFINITION {
        return Err(Error::NotFound(trip_id));
    }
    Ok(axum::response::IntoResponse::into_response(Json(
        TripView::from(&saga),
    )))
}

/// Trips, newest first.
#[utoipa::path(get, path = "/trips", tag = "trips",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of trips", body = Page<TripView>),
        (status = 400, description = "A query parameter is not acceptable", body = ErrorBody),
        (status = 503, description = "The database is unreachable", body = ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Result<Response> {
    let page = sagas::page(&state, query, Some(travel::DEFINITION)).await?;
    let trips = Page {
        sagas: page.sagas.iter().map(TripView::from).collect::<Vec<_>>(),
        next: page.next,
    };
    Ok(axum::response::IntoResponse::into_response(Json(trips)))
}
