//! The HTTP surface. Endpoints:
//! - `GET /metrics`: the last published sample, as OpenMetrics text when the client accepts it
//!   (Prometheus does), otherwise Prometheus text format 0.0.4.
//! - `GET /healthz`: 200 `ok` once a sample has been published, 503 before, and 503 again when
//!   the last successful sample is older than three intervals (at least 10 s).
//! - `GET /`: a small page listing the endpoints and the watched ports.
//! - `GET /api/v1/connections[?port=P]`: open connections with their class and the evidence
//!   behind it, as JSON. It shows peer addresses, so it answers 404 unless the exporter was
//!   started with `--web.enable-connections-api`.
//! - `GET /drain?port=P[&max_active=N][&max_websocket=N][&quiet=30s][&hold_samples=N]`: the
//!   drain verdict, 200 when the port is safe to remove, 503 when not, with a JSON body giving
//!   the numbers and the reason. Thresholds default to the `--drain.*` flags.
//! - `POST /drain/start?port=P`: marks the start of a drain (late arrivals are counted from
//!   then). It changes state, so it needs `Authorization: Bearer <token>` with the token of
//!   `--web.drain-token-file`; without a token file it is allowed only when the exporter listens
//!   on a loopback address, and refused (403) otherwise.
//!
//! With several network namespaces watched (`--netns`, more than one), the last three take
//! `netns=NAME` as well, and answer 400 without it.
//!
//! Handlers only read what the sampler published; no request ever dumps the kernel.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::registry::Registry;

use super::metrics::{encode_openmetrics, openmetrics_to_prometheus_text, SharedState};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Drain starts marked over HTTP, waiting for the samplers to take them: (scope index, port).
pub type DrainMarks = Arc<Mutex<Vec<(usize, u16)>>>;

/// The state published for one watched network namespace.
#[derive(Clone)]
pub struct Scope {
    /// The namespace as configured (`--netns`); `None` for drainwatch's own.
    pub netns: Option<String>,
    pub shared: SharedState,
}

/// Who may mark a drain start, and where the marks go.
#[derive(Clone, Debug)]
pub struct DrainControl {
    token: Option<String>,
    loopback_only: bool,
    marks: DrainMarks,
}

impl DrainControl {
    pub fn new(token: Option<String>, listen: SocketAddr, marks: DrainMarks) -> Self {
        DrainControl {
            token,
            loopback_only: listen.ip().is_loopback(),
            marks,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    /// One per watched network namespace, in configuration order.
    pub scopes: Arc<Vec<Scope>>,
    pub registry: Arc<Registry>,
    /// `None`: drain marking is not wired (refused).
    pub drain: Option<DrainControl>,
}

impl AppState {
    /// A single namespace, drainwatch's own.
    pub fn new(shared: SharedState) -> Self {
        AppState::scoped(vec![Scope {
            netns: None,
            shared,
        }])
    }

    /// Several namespaces: their series carry a `netns` label when there is more than one, and
    /// `/drain`, `/drain/start` and `/api/v1/connections` then need `netns=NAME`.
    pub fn scoped(scopes: Vec<Scope>) -> Self {
        let labelled = scopes.len() > 1;
        let registry = Arc::new(super::metrics::scoped_registry(
            scopes
                .iter()
                .map(|s| (s.netns.clone().filter(|_| labelled), s.shared.clone()))
                .collect(),
        ));
        AppState {
            scopes: Arc::new(scopes),
            registry,
            drain: None,
        }
    }

    /// The scope a request names with `netns`, or the only one. Unknown names are 404, a
    /// missing name with several namespaces watched is 400; both list the watched ones.
    fn scope(&self, netns: Option<&str>) -> Result<(usize, &Scope), Box<Response>> {
        let watched = || {
            self.scopes
                .iter()
                .filter_map(|s| s.netns.clone())
                .collect::<Vec<_>>()
        };
        match netns {
            Some(name) => self
                .scopes
                .iter()
                .enumerate()
                .find(|(_, s)| s.netns.as_deref() == Some(name))
                .ok_or_else(|| {
                    Box::new(
                        (
                            StatusCode::NOT_FOUND,
                            axum::Json(serde_json::json!({
                                "error": format!("network namespace {name:?} is not watched"),
                                "watched_netns": watched(),
                            })),
                        )
                            .into_response(),
                    )
                }),
            None if self.scopes.len() == 1 => Ok((0, &self.scopes[0])),
            None => Err(Box::new(
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({
                        "error": "netns is required: several network namespaces are watched",
                        "watched_netns": watched(),
                    })),
                )
                    .into_response(),
            )),
        }
    }

    pub fn with_drain_control(mut self, control: DrainControl) -> Self {
        self.drain = Some(control);
        self
    }
}

/// The exporter's HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(index))
        .route("/api/v1/connections", get(connections))
        .route("/drain", get(drain))
        .route("/drain/start", post(drain_start))
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

/// How long after the last successful sample the exporter still counts as healthy: three
/// intervals, and at least 10 s.
fn stale_after(interval_ms: u64) -> f64 {
    (3 * interval_ms).max(10_000) as f64 / 1000.0
}

async fn healthz(State(state): State<AppState>) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    for scope in state.scopes.iter() {
        let p = scope.shared.load();
        let last = p.stats.last_sample_unix_seconds;
        let ns = scope
            .netns
            .as_ref()
            .map(|n| format!(" (netns {n})"))
            .unwrap_or_default();
        if last <= 0.0 {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no sample yet{ns}\n"),
            )
                .into_response();
        }
        // A sampler that stopped succeeding (a stuck or failing dump) makes the exporter
        // unhealthy, so that a liveness probe restarts it.
        if p.sample_interval_ms > 0 && now - last > stale_after(p.sample_interval_ms) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("last successful sample {:.0}s ago{ns}\n", now - last),
            )
                .into_response();
        }
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn index(State(state): State<AppState>) -> Html<String> {
    let mut ports = String::new();
    let mut version = "";
    for scope in state.scopes.iter() {
        let published = scope.shared.load();
        version = published.version;
        let netns = match &scope.netns {
            Some(ns) => format!(" (netns {})", html_escape(ns)),
            None => String::new(),
        };
        for (port, agg) in &published.aggregates.ports {
            let _ = write!(
                ports,
                "<li>{port}{netns}{}</li>",
                if agg.listening { "" } else { " (no listener)" }
            );
        }
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
        version
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(Debug, serde::Deserialize)]
struct ConnectionsQuery {
    port: Option<String>,
    netns: Option<String>,
}

async fn connections(State(state): State<AppState>, Query(q): Query<ConnectionsQuery>) -> Response {
    let published = match state.scope(q.netns.as_deref()) {
        Ok((_, scope)) => scope.shared.load(),
        Err(r) => return *r,
    };
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

#[derive(Debug, serde::Deserialize)]
struct DrainQuery {
    port: Option<String>,
    max_active: Option<u64>,
    max_websocket: Option<u64>,
    quiet: Option<String>,
    hold_samples: Option<usize>,
    netns: Option<String>,
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn query_port(port: Option<&str>) -> Result<u16, Box<Response>> {
    let Some(port) = port else {
        return Err(Box::new(bad_request(
            "port is required: /drain?port=P".into(),
        )));
    };
    crate::config::parse_port(port).map_err(|e| Box::new(bad_request(format!("port: {e}"))))
}

async fn drain(State(state): State<AppState>, Query(q): Query<DrainQuery>) -> Response {
    let port = match query_port(q.port.as_deref()) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let (published, netns) = match state.scope(q.netns.as_deref()) {
        Ok((_, scope)) => (scope.shared.load(), scope.netns.clone()),
        Err(r) => return *r,
    };
    let mut t = published.drain_thresholds;
    if let Some(v) = q.max_active {
        t.max_active = v;
    }
    if let Some(v) = q.max_websocket {
        t.max_websocket = v;
    }
    if let Some(v) = &q.quiet {
        match crate::config::parse_threshold(v) {
            Ok(d) => t.quiet_ms = d.as_millis() as u64,
            Err(e) => return bad_request(format!("quiet: {e}")),
        }
    }
    if let Some(v) = q.hold_samples {
        if v == 0 {
            return bad_request("hold_samples: must be at least 1".into());
        }
        t.hold_samples = v;
    }
    // Before the first sample nothing is known: not ready (503) rather than "not watched",
    // so that a gate started with the exporter waits instead of failing.
    let empty = crate::model::drain::PortDrain::default();
    let history = match published.drains.get(&port) {
        Some(h) => Some(h),
        None if published.stats.last_sample_unix_seconds == 0.0 => Some(&empty),
        None => None,
    };
    let Some(history) = history else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "port": port,
                "error": "port not watched",
                "watched_ports": published.drains.keys().collect::<Vec<_>>(),
            })),
        )
            .into_response();
    };
    let verdict = history.verdict(port, &t);
    let status = if verdict.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let lifetimes: serde_json::Map<String, serde_json::Value> = published
        .aggregates
        .ports
        .get(&port)
        .map(|pa| {
            pa.classes
                .iter()
                .filter(|(_, ca)| ca.lifetime.count > 0)
                .map(|(class, ca)| {
                    let q = |x| ca.lifetime.quantile_upper_bound(x);
                    (
                        published.classes.name(*class).to_string(),
                        serde_json::json!({"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "closed": ca.lifetime.count}),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body = serde_json::json!({
        "netns": netns,
        "verdict": verdict,
        "thresholds": {
            "max_active": t.max_active,
            "max_websocket": t.max_websocket,
            "quiet_seconds": t.quiet_ms as f64 / 1000.0,
            "hold_samples": t.hold_samples,
        },
        "drain_started_unix_seconds": history.mark.map(|m| m.unix_ms as f64 / 1000.0),
        "opened_after_drain": history.mark.map(|m| m.opened_after),
        "lifetime_seconds_upper_bounds": lifetimes,
    });
    (status, axum::Json(body)).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct DrainStartQuery {
    port: Option<String>,
    netns: Option<String>,
}

async fn drain_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DrainStartQuery>,
) -> Response {
    let refuse = |status: StatusCode, message: &str| {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    };
    let Some(control) = &state.drain else {
        return refuse(StatusCode::FORBIDDEN, "drain marking is not available here");
    };
    match &control.token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes())) {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "a valid Authorization: Bearer token (--web.drain-token-file) is required",
                );
            }
        }
        None if control.loopback_only => {}
        None => {
            return refuse(
                StatusCode::FORBIDDEN,
                "drain marking is disabled: configure --web.drain-token-file, or listen on a loopback address",
            )
        }
    }
    let port = match query_port(q.port.as_deref()) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let (index, scope) = match state.scope(q.netns.as_deref()) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !scope.shared.load().drains.contains_key(&port) {
        return refuse(StatusCode::NOT_FOUND, "port not watched");
    }
    control
        .marks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((index, port));
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "port": port, "marked": true })),
    )
        .into_response()
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
