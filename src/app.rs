//! Wiring: the sampler thread (kernel -> model -> published state), the HTTP server, signals.
//! The only module that knows sources, model and exposition at once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::exposition::http::{app, AppState};
use crate::exposition::metrics::{Published, SelfStats, SharedState};
use crate::model::classify::Classifier;
use crate::model::socket::Snapshot;
use crate::model::watch::{PortSelection, Watch};
use crate::model::Model;
use crate::source::procfs::{read_host_counters, HostCounters};
use crate::source::sampler::Sampler;

const SOCK_DIAG: usize = 0;
const PROCFS: usize = 1;

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
    logged_failure: [bool; 2],
}

impl Pipeline {
    pub fn new(config: Config) -> Self {
        let classifier =
            Classifier::from_port_rules(config.class_rules.iter().map(|(p, c)| (*p, c.as_str())));
        let selection = if config.ports.is_empty() {
            PortSelection::Discover {
                max_ports: config.max_ports,
            }
        } else {
            PortSelection::Configured(config.ports.clone())
        };
        Pipeline {
            config,
            sampler: Sampler::new(),
            watch: Watch::new(selection),
            model: Model::new(classifier),
            snapshot: Snapshot::default(),
            host: None,
            stats: SelfStats::default(),
            logged_failure: [false; 2],
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
                self.model.observe(&self.snapshot);
                if self.watch.discovers() {
                    let watched: BTreeSet<u16> = selected.ports.iter().copied().collect();
                    self.model.aggregates.retain_ports(|p| watched.contains(&p));
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

    pub fn published(&self) -> Published {
        publish(&self.model, self.host.clone(), self.stats.clone())
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
}

/// What a scrape shows for `model`, the host counters and the self statistics.
pub fn publish(model: &Model, host: Option<HostCounters>, stats: SelfStats) -> Published {
    Published {
        aggregates: model.aggregates.clone(),
        classes: model.classifier.table().clone(),
        host,
        stats,
        version: VERSION,
        revision: REVISION,
    }
}

/// Runs the sampler on its own OS thread until `stop` is set, publishing after every sample.
pub fn spawn_sampler(
    config: Config,
    shared: SharedState,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || {
            let interval = config.interval;
            let mut pipeline = Pipeline::new(config);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
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
        })
}

/// Serves the exporter until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let shared: SharedState = Arc::new(ArcSwap::from_pointee(Published {
        version: VERSION,
        revision: REVISION,
        ..Published::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(config.listen_address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen_address))?;
    tracing::info!(
        address = %listener.local_addr()?,
        interval = ?config.interval,
        ports = ?config.ports,
        "drainwatch {VERSION} serving /metrics{}",
        if config.ports.is_empty() { ", watching every listening port" } else { "" }
    );
    let sampler = spawn_sampler(config, shared.clone(), stop.clone())?;
    let router = app(AppState::new(shared));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || sampler.join()).await;
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
