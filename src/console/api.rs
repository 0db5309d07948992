//! The console's HTTP surface: the embedded page (public: it holds no data),
//! and the JSON API and event stream behind the token. Errors are JSON
//! `{"error": ...}` with a status that says whose fault they are.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::hands_on::{Action, ActionReport, HandsOn, HandsOnError};
use super::{ConsoleSources, auth, fleet, view};
use crate::device::lifecycle::RotationSchedule;
use crate::device::live::StepEvent;

/// How often the fleet view is pushed.
const TICK: Duration = Duration::from_secs(1);
/// Devices a search returns.
const SEARCH_LIMIT: usize = 50;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
/// Nothing but the console's own files may load or run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

#[derive(Clone)]
struct Shared {
    sources: Arc<ConsoleSources>,
    stop: CancellationToken,
}

pub(super) fn router(
    sources: Arc<ConsoleSources>,
    access: Arc<auth::Access>,
    stop: CancellationToken,
) -> Router {
    let api = Router::new()
        .route("/overview", get(overview))
        .route("/fleet", get(fleet_now))
        .route("/events", get(events))
        .route("/devices", get(search))
        .route("/devices/{key}", get(device))
        .route("/registry", get(registry))
        .route("/hands-on", post(create))
        .route("/hands-on/{serial}/{action}", post(act))
        .layer(middleware::from_fn_with_state(access, auth::require))
        .with_state(Shared { sources, stop });
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .nest("/api", api)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// An API refusal.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<HandsOnError> for Refused {
    fn from(error: HandsOnError) -> Refused {
        let status = match &error {
            HandsOnError::BadSerial(_)
            | HandsOnError::BadTopic { .. }
            | HandsOnError::BadSetting(_) => StatusCode::BAD_REQUEST,
            HandsOnError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HandsOnError::NotFound(_) => StatusCode::NOT_FOUND,
            HandsOnError::FleetSerial(_)
            | HandsOnError::Exists(_)
            | HandsOnError::WrongState { .. } => StatusCode::CONFLICT,
            HandsOnError::TooMany => StatusCode::TOO_MANY_REQUESTS,
            HandsOnError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refused(status, error.to_string())
    }
}

fn absent(what: &str) -> Refused {
    Refused(StatusCode::NOT_FOUND, format!("this console has no {what}"))
}

async fn overview(State(shared): State<Shared>) -> Json<Value> {
    let sources = &shared.sources;
    Json(json!({
        "run": sources.fleet.as_ref().map(|f| f.run.clone()),
        "fleet": sources.fleet.is_some(),
        "registry": sources.registry.is_some(),
        "emulator_metrics": sources.metrics.is_some(),
        "hands_on": sources.hands_on.is_some(),
    }))
}

async fn fleet_now(State(shared): State<Shared>) -> Json<Value> {
    Json(fleet::tick(&shared.sources, &None).0)
}

/// The live feed: a `fleet` event every tick, and a `step` event for each
/// step a hands-on device takes. It ends when the console stops.
async fn events(
    State(shared): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let steps = shared
        .sources
        .hands_on
        .as_ref()
        .and_then(|h| h.live().subscribe());
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        shared,
        ticker,
        steps,
        previous: None,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

struct Feed {
    shared: Shared,
    ticker: tokio::time::Interval,
    steps: Option<broadcast::Receiver<StepEvent>>,
    previous: fleet::Previous,
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return None,
                _ = self.ticker.tick() => {
                    let (document, previous) = fleet::tick(&self.shared.sources, &self.previous);
                    self.previous = previous;
                    return Some(Event::default().event("fleet").data(document.to_string()));
                }
                step = next_step(&mut self.steps) => match step {
                    Ok(event) => {
                        let data = json!({ "serial": event.serial, "step": view::step_json(&event.step) });
                        return Some(Event::default().event("step").data(data.to_string()));
                    }
                    // A slow browser misses steps; the device view still has them.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => self.steps = None,
                },
            }
        }
    }
}

async fn next_step(
    steps: &mut Option<broadcast::Receiver<StepEvent>>,
) -> Result<StepEvent, broadcast::error::RecvError> {
    match steps {
        Some(steps) => steps.recv().await,
        None => std::future::pending().await,
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

async fn search(State(shared): State<Shared>, Query(query): Query<SearchQuery>) -> Json<Value> {
    let sources = &shared.sources;
    let tables = [
        (
            "hands_on",
            sources.hands_on.as_ref().map(|h| h.live().as_ref()),
        ),
        ("fleet", sources.fleet.as_ref().map(|f| f.live.as_ref())),
    ];
    let found: Vec<Value> = tables
        .into_iter()
        .filter_map(|(kind, table)| Some((kind, table?)))
        .flat_map(|(kind, table)| {
            table.search(&query.q, SEARCH_LIMIT).into_iter().map(move |(serial, state)| {
                json!({ "serial": serial, "state": state.as_str(), "kind": kind })
            })
        })
        .take(SEARCH_LIMIT)
        .collect();
    Json(json!({ "devices": found }))
}

async fn device(
    State(shared): State<Shared>,
    Path(key): Path<String>,
) -> Result<Json<Value>, Refused> {
    let sources = &shared.sources;
    let registry = sources.registry.as_deref();
    let hands_on = sources.hands_on.as_ref().and_then(|h| h.live().find(&key));
    if let Some(status) = hands_on {
        return Ok(Json(view::device_json(&status, registry, "hands_on")));
    }
    sources
        .fleet
        .as_ref()
        .and_then(|f| f.live.find(&key))
        .map(|status| Json(view::device_json(&status, registry, "fleet")))
        .ok_or_else(|| {
            Refused(
                StatusCode::NOT_FOUND,
                format!("no device with serial or thing name {key:?}"),
            )
        })
}

async fn registry(State(shared): State<Shared>) -> Result<Json<Value>, Refused> {
    let registry = shared
        .sources
        .registry
        .as_deref()
        .ok_or_else(|| absent("registry"))?;
    Ok(Json(view::registry_json(registry)))
}

#[derive(Deserialize)]
struct CreateRequest {
    serial: String,
}

async fn create(
    State(shared): State<Shared>,
    Json(request): Json<CreateRequest>,
) -> Result<Json<Value>, Refused> {
    let hands_on = hands_on(&shared)?;
    let report = hands_on.create(&request.serial).await?;
    Ok(Json(report_json(&request.serial, &report)))
}

/// The body of an action; each action reads the fields it needs.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionRequest {
    topic: Option<String>,
    payload: Option<String>,
    enabled: Option<bool>,
    check_every: Option<String>,
    renew_before: Option<String>,
}

async fn act(
    State(shared): State<Shared>,
    Path((serial, action)): Path<(String, String)>,
    body: Option<Json<ActionRequest>>,
) -> Result<Json<Value>, Refused> {
    let hands_on = hands_on(&shared)?;
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let action = parse_action(&action, request)?;
    let report = hands_on.act(&serial, action).await?;
    Ok(Json(report_json(&serial, &report)))
}

fn hands_on(shared: &Shared) -> Result<&HandsOn, Refused> {
    shared
        .sources
        .hands_on
        .as_ref()
        .ok_or_else(|| absent("hands-on devices"))
}

fn parse_action(name: &str, request: ActionRequest) -> Result<Action, Refused> {
    let missing = |field: &str| Refused(StatusCode::BAD_REQUEST, format!("{name} needs `{field}`"));
    Ok(match name {
        "connect" => Action::Connect,
        "disconnect" => Action::Disconnect,
        "rotate" => Action::RotateNow,
        "subscribe" => Action::Subscribe {
            filter: request.topic.ok_or_else(|| missing("topic"))?,
        },
        "publish" => Action::Publish {
            topic: request.topic.ok_or_else(|| missing("topic"))?,
            payload: request.payload.unwrap_or_default().into_bytes(),
        },
        "auto-rotation" => Action::AutoRotation(auto_rotation(&request)?),
        other => {
            return Err(Refused(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}"),
            ));
        }
    })
}

fn auto_rotation(request: &ActionRequest) -> Result<Option<RotationSchedule>, Refused> {
    if !request.enabled.unwrap_or(false) {
        return Ok(None);
    }
    let duration = |field: &str, value: &Option<String>| {
        let text = value.as_deref().ok_or_else(|| {
            Refused(
                StatusCode::BAD_REQUEST,
                format!("auto-rotation needs `{field}`"),
            )
        })?;
        humantime::parse_duration(text).map_err(|e| {
            Refused(
                StatusCode::BAD_REQUEST,
                format!("{field}: {text:?} is not a duration: {e}"),
            )
        })
    };
    Ok(Some(RotationSchedule {
        check_every: duration("check_every", &request.check_every)?,
        renew_before: duration("renew_before", &request.renew_before)?,
        jitter: Duration::ZERO,
    }))
}

fn report_json(serial: &str, report: &ActionReport) -> Value {
    json!({
        "serial": serial,
        "ok": report.ok,
        "steps": report.steps.iter().map(view::step_json).collect::<Vec<_>>(),
    })
}
