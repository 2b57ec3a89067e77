//! The sample's API, as it always was: start a trip (`GET /trip`, the
//! sample's entry point, and `POST /trips`), read one (`GET /trips/{trip_id}`),
//! list them (`GET /trips`). Thin routes onto the `travel` definition: the
//! trip id is the saga's id, the other fields its input.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use common::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};

use super::sagas::{self, ListQuery, Page};
use super::{Error, Result};
use crate::AppState;
use crate::saga::view::SagaView;
use crate::travel::{self, TripInput};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/trip", get(trip_get))
        .route("/trips", get(list).post(trip_post))
        .route("/trips/{trip_id}", get(show))
}

/// A travel saga as the sample's API shows it: the saga, with its trip id
/// and run type first.
#[derive(Debug, Serialize)]
struct TripView<'a> {
    trip_id: &'a str,
    run_type: Option<&'a str>,
    #[serde(flatten)]
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
#[derive(Debug, Deserialize)]
struct TripQuery {
    #[serde(rename = "runType")]
    run_type: Option<String>,
    #[serde(rename = "tripID")]
    trip_id: Option<String>,
    wait: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

#[tracing::instrument(skip_all, fields(trip_id = query.trip_id, run_type = query.run_type))]
async fn trip_get(
    State(state): State<AppState>,
    Query(query): Query<TripQuery>,
) -> Result<Response> {
    let wait = state.wait(query.wait.as_deref())?;
    let input = TripInput {
        trip_id: query.trip_id,
        run_type: query.run_type,
        ..TripInput::default()
    };
    start_or_join(&state, input, wait).await
}

#[tracing::instrument(skip_all, fields(trip_id = input.trip_id))]
async fn trip_post(
    State(state): State<AppState>,
    Query(query): Query<WaitQuery>,
    Json(input): Json<TripInput>,
) -> Result<Response> {
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

#[tracing::instrument(skip_all)]
async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Result<Response> {
    let page = sagas::page(&state, query, Some(travel::DEFINITION)).await?;
    let trips = Page {
        sagas: page.sagas.iter().map(TripView::from).collect::<Vec<_>>(),
        next: page.next,
    };
    Ok(axum::response::IntoResponse::into_response(Json(trips)))
}
