//! HTTP handlers through `app().oneshot(..)`: no server, no kernel.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::{to_bytes, Body};
use axum::http::{header, Request, StatusCode};
use drainwatch::app::{connection_list, publish};
use drainwatch::exposition::http::{app, AppState, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};
use drainwatch::exposition::metrics::{Published, SelfStats, SharedState};
use drainwatch::model::classify::Classifier;
use drainwatch::model::Model;
use drainwatch::source::replay::parse_scenario;
use tower::ServiceExt;

fn state_after(scenario: &str) -> SharedState {
    let mut model = Model::new(Classifier::default());
    let mut stats = SelfStats::default();
    for s in parse_scenario(scenario).unwrap() {
        model.observe(&s);
        stats.last_sample_unix_seconds = s.taken_at.unix_ms as f64 / 1000.0;
    }
    Arc::new(ArcSwap::from_pointee(publish(&model, None, stats)))
}

const ONE_PORT: &str = r#"
watched = [8080]
[[sample]]
at = "0s"
listeners = [{ port = 8080 }]
[[sample]]
at = "1s"
listeners = [{ port = 8080 }]
sockets = [{ cookie = 1, state = "established", port = 8080, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 }]
"#;

async fn get(state: SharedState, uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::get(uri);
    if let Some(a) = accept {
        req = req.header(header::ACCEPT, a);
    }
    let resp = app(AppState::new(state))
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_are_openmetrics_for_prometheus() {
    // The Accept header Prometheus 2.x sends.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (status, ctype, body) = get(state_after(ONE_PORT), "/metrics", Some(accept)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, OPENMETRICS_CONTENT_TYPE);
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# TYPE drainwatch_connections_opened counter\n"));
    assert!(body
        .contains("drainwatch_connections{port=\"8080\",class=\"http\",state=\"established\"} 1"));
}

#[tokio::test]
async fn metrics_are_prometheus_text_for_other_clients() {
    let (status, ctype, body) = get(state_after(ONE_PORT), "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, TEXT_CONTENT_TYPE);
    assert!(!body.contains("# EOF"));
    assert!(body.contains("# TYPE drainwatch_connections_opened_total counter\n"));
    assert!(body.contains("drainwatch_connections_opened_total{port=\"8080\",class=\"http\"} 1\n"));
}

#[tokio::test]
async fn healthz_waits_for_the_first_sample() {
    let empty: SharedState = Arc::new(ArcSwap::from_pointee(Published::default()));
    let (status, _, _) = get(empty, "/healthz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = get(state_after(ONE_PORT), "/healthz", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
}

#[tokio::test]
async fn healthz_fails_when_the_sampler_stopped_succeeding() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = |ago: f64| -> SharedState {
        let mut p = Published {
            sample_interval_ms: 1000,
            ..Published::default()
        };
        p.stats.last_sample_unix_seconds = now - ago;
        Arc::new(ArcSwap::from_pointee(p))
    };
    let (status, _, _) = get(at(2.0), "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    // Three intervals, at least 10 s: 12 s without a good sample is unhealthy.
    let (status, _, body) = get(at(12.0), "/healthz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("last successful sample 12s ago"), "{body}");
}

#[tokio::test]
async fn index_lists_endpoints_and_watched_ports() {
    let (status, ctype, body) = get(state_after(ONE_PORT), "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/html"));
    assert!(body.contains("href=\"/metrics\""));
    assert!(body.contains("<li>8080</li>"));
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let (status, _, _) = get(state_after(ONE_PORT), "/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn connections_api_is_off_by_default() {
    let (status, _, body) = get(state_after(ONE_PORT), "/api/v1/connections", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("--web.enable-connections-api"));
}

#[tokio::test]
async fn connections_api_explains_each_class() {
    let snapshots = parse_scenario(
        r#"
        watched = [80, 8080]
        [[sample]]
        at = "0s"
        listeners = [{ port = 80 }, { port = 8080 }]
        [[sample]]
        at = "1s"
        listeners = [{ port = 80 }, { port = 8080 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 },
          { cookie = 2, state = "established", port = 8080, peer = "10.250.0.1:40002", segs_in = 1, segs_out = 1 },
        ]
        [[sample]]
        at = "2s"
        listeners = [{ port = 80 }, { port = 8080 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 1 },
          { cookie = 2, state = "established", port = 8080, peer = "10.250.0.1:40002", segs_in = 1, segs_out = 1 },
        ]
        [[sample]]
        at = "3s"
        listeners = [{ port = 80 }, { port = 8080 }]
        sockets = [
          { cookie = 1, state = "established", port = 80, peer = "10.250.0.1:40001", segs_in = 1, segs_out = 2, idle_ms = 500 },
          { cookie = 2, state = "established", port = 8080, peer = "10.250.0.1:40002", segs_in = 2, segs_out = 2 },
        ]
        "#,
    )
    .unwrap();
    let mut model = Model::new(Classifier::default());
    for s in &snapshots {
        model.observe(s);
    }
    let mut published = publish(&model, None, SelfStats::default());
    published.connections = Some(Arc::new(connection_list(&model, snapshots.last().unwrap())));
    let state: SharedState = Arc::new(ArcSwap::from_pointee(published));

    let (status, ctype, body) = get(state.clone(), "/api/v1/connections?port=80", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "application/json");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["count"], 1);
    let c = &json["connections"][0];
    assert_eq!(c["peer"], "10.250.0.1:40001");
    assert_eq!(c["class"], "websocket");
    assert_eq!(c["reason"], "server push without request");
    assert_eq!(c["server_pushes"], 1);
    assert_eq!(c["age_seconds"], 2.0);
    assert_eq!(c["idle_seconds"], 0.5);

    let (_, _, body) = get(state.clone(), "/api/v1/connections", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["count"], 2);
    assert_eq!(json["connections"][1]["class"], "http");

    let (status, _, _) = get(state, "/api/v1/connections?port=70000", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// One port that drained: a connection closed at 2 s, the listener stays; 20 samples.
fn drained_port_state() -> SharedState {
    let mut scenario = String::from("watched = [8080]\nevents = true\n");
    for t in 0..20 {
        scenario += &format!("[[sample]]\nat = \"{t}s\"\nlisteners = [{{ port = 8080 }}]\n");
        if t < 2 {
            scenario += "sockets = [{ cookie = 1, state = \"established\", port = 8080, peer = \"10.250.0.1:40001\", segs_in = 1, segs_out = 1 }]\n";
        }
        if t == 2 {
            scenario += "destroyed = [{ cookie = 1, port = 8080, peer = \"10.250.0.1:40001\" }]\n";
        }
    }
    state_after(&scenario)
}

#[tokio::test]
async fn drain_answers_200_when_ready_and_503_with_the_reason_when_not() {
    let state = drained_port_state();
    let (status, ctype, body) = get(state.clone(), "/drain?port=8080", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(ctype.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"]["ready"], true);
    assert_eq!(v["verdict"]["phase"], "drained");
    // The same history under a quiet window longer than what was observed is not ready.
    let (status, _, body) = get(state.clone(), "/drain?port=8080&quiet=60s", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"]["ready"], false);
    assert!(
        v["verdict"]["reason"]
            .as_str()
            .unwrap()
            .contains("less than the quiet window of 60s"),
        "{body}"
    );
    let (status, _, _) = get(state.clone(), "/drain?port=9999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(state.clone(), "/drain", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = get(state, "/drain?port=8080&quiet=soon", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Before the first sample: not ready (503, "no sample yet"), not "port not watched".
    let fresh: SharedState = Arc::new(ArcSwap::from_pointee(Published::default()));
    let (status, _, body) = get(fresh, "/drain?port=8080", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"]["reason"], "no sample yet", "{body}");
}

async fn post(router: axum::Router, uri: &str, token: Option<&str>) -> StatusCode {
    let mut req = Request::post(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    router
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn drain_start_needs_the_token_or_a_loopback_listener_and_changes_nothing_otherwise() {
    use drainwatch::exposition::http::{DrainControl, DrainMarks};
    let state = drained_port_state();
    let token = "0123456789abcdef-secret";
    let public: std::net::SocketAddr = "0.0.0.0:9977".parse().unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:9977".parse().unwrap();
    let router = |control: Option<DrainControl>| {
        let s = AppState::new(state.clone());
        app(match control {
            Some(c) => s.with_drain_control(c),
            None => s,
        })
    };

    // A token is configured: no token or a wrong one is refused (401), nothing is marked.
    let marks = DrainMarks::default();
    let with_token = || Some(DrainControl::new(Some(token.into()), public, marks.clone()));
    assert_eq!(
        post(router(with_token()), "/drain/start?port=8080", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(
            router(with_token()),
            "/drain/start?port=8080",
            Some("0123456789abcdef-wrong!")
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert!(marks.lock().unwrap().is_empty());
    assert_eq!(
        post(router(with_token()), "/drain/start?port=8080", Some(token)).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(*marks.lock().unwrap(), vec![(0, 8080)]);

    // No token, listening on every address: refused (403).
    let marks = DrainMarks::default();
    let open = Some(DrainControl::new(None, public, marks.clone()));
    assert_eq!(
        post(router(open), "/drain/start?port=8080", None).await,
        StatusCode::FORBIDDEN
    );
    assert!(marks.lock().unwrap().is_empty());
    // No control wired at all: refused.
    assert_eq!(
        post(router(None), "/drain/start?port=8080", None).await,
        StatusCode::FORBIDDEN
    );

    // No token, loopback listener: allowed; an unwatched port is 404 and not marked.
    let marks = DrainMarks::default();
    let local = || Some(DrainControl::new(None, loopback, marks.clone()));
    assert_eq!(
        post(router(local()), "/drain/start?port=9999", None).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(router(local()), "/drain/start?port=8080", None).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(*marks.lock().unwrap(), vec![(0, 8080)]);
    // GET is not a way to mark.
    let (status, _, _) = get(state, "/drain/start?port=8080", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
