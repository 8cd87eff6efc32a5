//! The HTTP surface. Endpoints:
//! - `GET /metrics`: the last published sample, as OpenMetrics text when the client accepts it
//!   (Prometheus does), otherwise Prometheus text format 0.0.4.
//! - `GET /healthz`: 200 `ok` once a sample has been published, 503 before.
//! - `GET /`: a small page listing the endpoints and the watched ports.
//! - `GET /api/v1/connections[?port=P]`: open connections with their class and the evidence
//!   behind it, as JSON. It shows peer addresses, so it answers 404 unless the exporter was
//!   started with `--web.enable-connections-api`.
//!
//! Handlers only read what the sampler published; no request ever dumps the kernel.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use super::metrics::{encode_openmetrics, openmetrics_to_prometheus_text, SharedState};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
pub struct AppState {
    pub shared: SharedState,
    pub registry: Arc<Registry>,
}

impl AppState {
    pub fn new(shared: SharedState) -> Self {
        let registry = Arc::new(super::metrics::registry(shared.clone()));
        AppState { shared, registry }
    }
}

/// The exporter's HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(index))
        .route("/api/v1/connections", get(connections))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = match encode_openmetrics(&state.registry) {
        Ok(body) => body,
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    };
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            openmetrics_to_prometheus_text(&body),
        )
            .into_response()
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.shared.load().stats.last_sample_unix_seconds > 0.0 {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no sample yet\n").into_response()
    }
}

async fn index(State(state): State<AppState>) -> Html<String> {
    let published = state.shared.load();
    let mut ports = String::new();
    for (port, agg) in &published.aggregates.ports {
        let _ = write!(
            ports,
            "<li>{port}{}</li>",
            if agg.listening { "" } else { " (no listener)" }
        );
    }
    if ports.is_empty() {
        ports.push_str("<li>none yet</li>");
    }
    Html(format!(
        "<!doctype html><html><head><title>drainwatch</title></head><body>\
         <h1>drainwatch {}</h1>\
         <p>Per-port TCP connection lifecycle for draining backends.</p>\
         <ul><li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\
         <li><a href=\"/healthz\">/healthz</a>: 200 once a sample was taken</li></ul>\
         <h2>Watched ports</h2><ul>{ports}</ul></body></html>\n",
        published.version
    ))
}

#[derive(Debug, serde::Deserialize)]
struct ConnectionsQuery {
    port: Option<String>,
}

async fn connections(State(state): State<AppState>, Query(q): Query<ConnectionsQuery>) -> Response {
    let published = state.shared.load();
    let Some(list) = &published.connections else {
        return (
            StatusCode::NOT_FOUND,
            "the connections API is off: it lists peer addresses; start drainwatch with --web.enable-connections-api\n",
        )
            .into_response();
    };
    let port = match q.port.as_deref().map(crate::config::parse_port).transpose() {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("port: {e}\n")).into_response(),
    };
    let selected: Vec<_> = list
        .iter()
        .filter(|c| port.is_none_or(|p| c.port == p))
        .collect();
    axum::Json(serde_json::json!({
        "port": port,
        "count": selected.len(),
        "connections": selected,
    }))
    .into_response()
}
