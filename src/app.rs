//! Wiring: the sampler thread (kernel -> model -> published state), the HTTP server, signals.
//! The only module that knows sources, model and exposition at once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, NetnsTarget};
use crate::exposition::http::{app, AppState, DrainControl, DrainMarks, Scope};
use crate::exposition::metrics::{ConnectionInfo, Published, SelfStats, SharedState};
use crate::model::classify::Classifier;
use crate::model::socket::Snapshot;
use crate::model::tracker::idle_ms;
use crate::model::watch::{PortSelection, Watch};
use crate::model::Model;
use crate::source::procfs::{read_host_counters, HostCounters};
use crate::source::sampler::Sampler;

const SOCK_DIAG: usize = 0;
const PROCFS: usize = 1;
const DESTROY_EVENTS: usize = 2;
const TRACEPOINTS: usize = 3;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = match option_env!("DRAINWATCH_REVISION") {
    Some(r) => r,
    None => "unknown",
};

/// The sampling pipeline: owns the source, the model and the self statistics.
pub struct Pipeline {
    config: Config,
    sampler: Sampler,
    watch: Watch,
    model: Model,
    snapshot: Snapshot,
    host: Option<HostCounters>,
    stats: SelfStats,
    logged_failure: [bool; 4],
}

impl Pipeline {
    pub fn new(config: Config) -> Self {
        let classifier = Classifier::new(&config.class_rules, config.thresholds);
        let selection = if config.ports.is_empty() {
            PortSelection::Discover {
                max_ports: config.max_ports,
            }
        } else {
            PortSelection::Configured(config.ports.clone())
        };
        let mut stats = SelfStats::default();
        let mut logged_failure = [false; 4];
        let mut sampler = if config.destroy_events {
            let (sampler, error) = Sampler::with_events();
            match error {
                None => stats.source_up[DESTROY_EVENTS] = true,
                Some(e) => {
                    tracing::warn!(
                        "{e}; counting from dumps only (closes and openings between samples are missed)"
                    );
                    stats.source_errors[DESTROY_EVENTS] += 1;
                    logged_failure[DESTROY_EVENTS] = true;
                }
            }
            sampler
        } else {
            Sampler::new()
        };
        stats.events_subscribed = sampler.events_subscribed();
        if config.tracepoints {
            match sampler.enable_tracepoints(&config.tracefs, &config.procfs) {
                Ok(()) => stats.source_up[TRACEPOINTS] = true,
                Err(e) => {
                    tracing::warn!(
                        "cannot read tracepoints: {e}; resets and timeouts are not counted, close reasons are unknown"
                    );
                    stats.source_errors[TRACEPOINTS] += 1;
                    logged_failure[TRACEPOINTS] = true;
                }
            }
        }
        stats.tracepoints_running = sampler.tracepoints_running();
        Pipeline {
            config,
            sampler,
            watch: Watch::new(selection),
            model: Model::new(classifier),
            snapshot: Snapshot::default(),
            host: None,
            stats,
            logged_failure,
        }
    }

    fn failed(&mut self, source: usize, error: &dyn std::fmt::Display) {
        self.stats.source_errors[source] += 1;
        self.stats.source_up[source] = false;
        let name = crate::exposition::metrics::SOURCES[source];
        // Log the first failure loudly, later ones quietly: a broken source fails every sample.
        if self.logged_failure[source] {
            tracing::debug!(source = name, "{error}");
        } else {
            tracing::warn!(
                source = name,
                "source failed, keeping the last good data: {error}"
            );
            self.logged_failure[source] = true;
        }
    }

    /// Takes one sample and folds it into the model. On a failed dump the model keeps the last
    /// good state; the failure is counted.
    pub fn step(&mut self) -> bool {
        let started = Instant::now();
        let draining: BTreeSet<u16> = if self.watch.discovers() {
            self.model.tracker.ports_with_open_connections()
        } else {
            BTreeSet::new()
        };
        let ok = match self
            .sampler
            .sample(&mut self.watch, &draining, &mut self.snapshot)
        {
            Ok(selected) => {
                if let Some(drained) = self.sampler.drain_events(&mut self.snapshot) {
                    if drained.overflowed {
                        self.stats.events_overflows += 1;
                    }
                    if drained.undecodable > 0 {
                        self.stats.source_errors[DESTROY_EVENTS] += drained.undecodable;
                    }
                    self.stats.destroy_events += drained.received;
                }
                if let Some(drained) = self.sampler.drain_trace(&mut self.snapshot) {
                    self.stats.trace_events += drained.received;
                    self.stats.trace_lost += drained.lost;
                    if drained.lost > 0 {
                        self.stats.trace_overflows += 1;
                    }
                    if drained.undecodable > 0 {
                        self.stats.source_errors[TRACEPOINTS] += drained.undecodable;
                    }
                }
                self.model.observe(&self.snapshot);
                self.stats.events_missed = self.model.tracker.missed_events();
                self.stats.trace_unattributed = self.model.attributor.unattributed();
                if self.watch.discovers() {
                    let watched: BTreeSet<u16> = selected.ports.iter().copied().collect();
                    self.model.aggregates.retain_ports(|p| watched.contains(&p));
                    self.model.drains.retain_ports(|p| watched.contains(&p));
                }
                self.model.aggregates.unwatched_listening_ports = selected.over_cap;
                self.stats.source_up[SOCK_DIAG] = true;
                self.logged_failure[SOCK_DIAG] = false;
                self.stats.sampled_sockets =
                    (self.snapshot.sockets.len() + self.snapshot.listeners.len()) as u64;
                self.stats.tracked_connections = self.model.tracker.tracked() as u64;
                self.stats.last_sample_unix_seconds =
                    self.snapshot.taken_at.unix_ms as f64 / 1000.0;
                true
            }
            Err(e) => {
                self.failed(SOCK_DIAG, &e);
                false
            }
        };
        self.stats
            .sample_duration
            .observe(started.elapsed().as_secs_f64());
        ok
    }

    /// Reads the host-wide counters; on failure the last good values stay.
    pub fn read_host(&mut self) {
        match read_host_counters(&self.config.procfs) {
            Ok(h) => {
                self.host = Some(h);
                self.stats.source_up[PROCFS] = true;
                self.logged_failure[PROCFS] = false;
            }
            Err(e) => self.failed(PROCFS, &e),
        }
    }

    /// Marks the start of a drain of `port`: openings of the following samples count as late
    /// arrivals.
    pub fn mark_drain(&mut self, port: u16) {
        let t = self.snapshot.taken_at;
        self.model.drains.mark(port, t.monotonic_ms, t.unix_ms);
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn published(&self) -> Published {
        let mut published = publish(&self.model, self.host.clone(), self.stats.clone());
        published.drain_thresholds = self.config.drain;
        published.sample_interval_ms = self.config.interval.as_millis() as u64;
        if self.config.connections_api {
            published.connections = Some(Arc::new(connection_list(&self.model, &self.snapshot)));
        }
        published
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn stats(&self) -> &SelfStats {
        &self.stats
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// What a scrape shows for `model`, the host counters and the self statistics.
pub fn publish(model: &Model, host: Option<HostCounters>, stats: SelfStats) -> Published {
    Published {
        connections: None,
        aggregates: model.aggregates.clone(),
        classes: model.classifier.table().clone(),
        host,
        stats,
        drains: model.drains.ports.clone(),
        drain_thresholds: Default::default(),
        sample_interval_ms: 0,
        version: VERSION,
        revision: REVISION,
    }
}

/// The open connections of the last sample with their class and its evidence.
pub fn connection_list(model: &Model, snapshot: &Snapshot) -> Vec<ConnectionInfo> {
    let now = snapshot.taken_at.monotonic_ms;
    let states = crate::model::socket::GAUGE_STATES;
    snapshot
        .sockets
        .iter()
        .zip(model.views())
        .filter(|(r, v)| v.counted && v.first_seen_ms.is_some() && r.state.is_open())
        .map(|(r, v)| {
            let age_ms = now.saturating_sub(v.first_seen_ms.unwrap_or(now));
            ConnectionInfo {
                port: r.local_port,
                peer: std::net::SocketAddr::new(r.remote_addr, r.remote_port),
                state: r.state.gauge_index().map(|i| states[i]).unwrap_or("other"),
                class: model.classifier.table().name(v.class).to_string(),
                reason: v.evidence.reason.label(),
                server_pushes: v.evidence.pushes,
                stream_samples: v.evidence.stream_run,
                age_seconds: age_ms as f64 / 1000.0,
                age_is_lower_bound: v.preexisting,
                idle_seconds: r
                    .info
                    .as_ref()
                    .map(|i| idle_ms(i, age_ms, v.preexisting) as f64 / 1000.0)
                    .unwrap_or(0.0),
                retransmitting: r.is_retransmitting(),
            }
        })
        .collect()
}

/// Runs the sampler of scope `scope` on its own OS thread until `stop` is set, publishing after
/// every sample. With `netns`, the thread first enters that network namespace, so that its
/// dumps, destroy events, interface addresses and /proc/thread-self/net are that namespace's;
/// an error entering it is returned before any sample.
pub fn spawn_sampler(
    config: Config,
    scope: usize,
    netns: Option<NetnsTarget>,
    shared: SharedState,
    marks: DrainMarks,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let name = match &netns {
        Some(t) => format!("sampler-{}", t.label),
        None => "sampler".to_string(),
    };
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        if let Some(t) = &netns {
            let entered = crate::source::netns::enter(&t.path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot enter network namespace {} ({}): {e}",
                    t.label,
                    t.path.display()
                )
            });
            let failed = entered.is_err();
            let _ = entered_tx.send(entered);
            if failed {
                return;
            }
        } else {
            let _ = entered_tx.send(Ok(()));
        }
        let interval = config.interval;
        let mut pipeline = Pipeline::new(config);
        // Namespace entered, sources open: what only start-up needed goes.
        crate::source::privileges::drop_startup();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let marked: Vec<u16> = {
                let mut marks = marks.lock().unwrap_or_else(|p| p.into_inner());
                let (ours, others) = marks.drain(..).partition(|(s, _)| *s == scope);
                *marks = others;
                ours.into_iter().map(|(_, port)| port).collect::<Vec<_>>()
            };
            for port in marked {
                pipeline.mark_drain(port);
            }
            pipeline.step();
            pipeline.read_host();
            shared.store(Arc::new(pipeline.published()));
            next += interval;
            let now = Instant::now();
            if next < now {
                // Fell behind (a slow dump): skip the missed ticks instead of bursting.
                next = now + interval;
            }
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
            }
        }
    })?;
    match entered_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            let _ = handle.join();
            Err(anyhow::anyhow!(
                "the sampler thread ended before its first sample"
            ))
        }
    }
}

fn empty_state() -> SharedState {
    Arc::new(ArcSwap::from_pointee(Published {
        version: VERSION,
        revision: REVISION,
        ..Published::default()
    }))
}

/// Starts one sampler per watched network namespace (drainwatch's own when none is
/// configured). On an error every sampler already started is stopped before returning it.
fn start_samplers(
    config: &Config,
    marks: &DrainMarks,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Vec<Scope>, Vec<std::thread::JoinHandle<()>>)> {
    let targets: Vec<Option<NetnsTarget>> = if config.netns.is_empty() {
        vec![None]
    } else {
        config.netns.iter().cloned().map(Some).collect()
    };
    let mut scopes = Vec::with_capacity(targets.len());
    let mut samplers = Vec::with_capacity(targets.len());
    for (i, target) in targets.into_iter().enumerate() {
        let shared = empty_state();
        let netns = target.as_ref().map(|t| t.label.clone());
        match spawn_sampler(
            config.clone(),
            i,
            target,
            shared.clone(),
            marks.clone(),
            stop.clone(),
        ) {
            Ok(handle) => samplers.push(handle),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for s in samplers {
                    let _ = s.join();
                }
                return Err(e);
            }
        }
        scopes.push(Scope { netns, shared });
    }
    Ok((scopes, samplers))
}

/// What runs before the HTTP runtime exists: the bound listener and the samplers (which enter
/// their namespaces and open their sources with the start-up capabilities; see
/// [`crate::source::privileges`]).
pub struct Started {
    listener: std::net::TcpListener,
    web: Arc<crate::exposition::webconfig::WebConfig>,
    scopes: Vec<Scope>,
    samplers: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    marks: DrainMarks,
}

/// Binds the listener and starts the samplers. Called from `main` before the runtime, so that
/// the runtime's threads are created after `main` dropped the start-up capabilities.
pub fn start(config: &Config) -> anyhow::Result<Started> {
    let web = match &config.web_config_file {
        Some(path) => crate::exposition::webconfig::WebConfig::load(path)?,
        None => Default::default(),
    };
    let listener = std::net::TcpListener::bind(config.listen_address)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen_address))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let marks = DrainMarks::default();
    let (scopes, samplers) = start_samplers(config, &marks, &stop)?;
    Ok(Started {
        listener,
        web: Arc::new(web),
        scopes,
        samplers,
        stop,
        marks,
    })
}

/// Serves the exporter until SIGTERM or SIGINT.
pub async fn serve(config: Config, started: Started) -> anyhow::Result<()> {
    let Started {
        listener,
        web,
        scopes,
        samplers,
        stop,
        marks,
    } = started;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(
        address = %listener.local_addr()?,
        interval = ?config.interval,
        ports = ?config.ports,
        netns = ?config.netns.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
        tls = web.tls.is_some(),
        basic_auth = !web.users.is_empty(),
        "drainwatch {VERSION} serving /metrics{}",
        if config.ports.is_empty() { ", watching every listening port" } else { "" }
    );
    let control = DrainControl::new(config.drain_token.clone(), config.listen_address, marks);
    let router = app(AppState::scoped(scopes).with_drain_control(control));
    let router = crate::exposition::server::protect(router, web.clone(), config.web_limits);
    crate::exposition::server::serve(listener, router, web, config.web_limits, shutdown_signal())
        .await?;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || {
        for s in samplers {
            let _ = s.join();
        }
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install the SIGTERM handler: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
}
