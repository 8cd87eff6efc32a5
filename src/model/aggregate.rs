//! Aggregates: the bounded per-`{port, class}` numbers the exporter publishes, built from each
//! snapshot (gauges, rebuilt every sample) and the tracker's lifecycle events (counters and the
//! lifetime histogram, which only grow).
//!
//! Label sets are bounded by the watched ports and the configured classes; no peer address or
//! client port ever reaches this module's output.

use std::collections::BTreeMap;

use super::classify::{ClassId, Classifier};
use super::resets::{Direction, Outcome, CLOSE_REASONS, RECEIVED_REASON};
use super::socket::{Snapshot, GAUGE_STATES};
use super::tracker::{idle_ms, LifecycleEvent, SocketView};

/// Upper bounds (seconds) of the lifetime histogram buckets: 0.1 s to 7 days.
pub const LIFETIME_BUCKETS: [f64; 20] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    14400.0, 43200.0, 86400.0, 172800.0, 604800.0,
];

/// Bounds (seconds) of the age and idle distributions of open connections: each value counts
/// the open connections at least that old (or idle at least that long); the 0 bound counts
/// every open connection.
pub const OPEN_BOUNDS: [u64; 14] = [
    0, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400,
];

/// A classic histogram over fixed bucket bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, plus the +Inf bucket last.
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&LIFETIME_BUCKETS)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Upper bound of the bucket holding the `q` quantile (as `histogram_quantile` would bound
    /// it), `None` without observations; `+Inf` when it lies beyond the last bound.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.cumulative()
            .into_iter()
            .find(|&(_, c)| c >= rank)
            .map(|(b, _)| b)
    }

    /// `(upper bound, count in that bucket alone)` pairs, ending with `+Inf`: what
    /// prometheus-client's histogram encoder takes (it accumulates them itself).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// `(upper bound, cumulative count)` pairs, ending with `+Inf`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter())
            .map(|(b, c)| {
                acc += c;
                (b, acc)
            })
            .collect()
    }
}

/// Numbers of one `{port, class}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassAggregate {
    /// Sockets per state of [`GAUGE_STATES`] in the last sample.
    pub states: [u64; GAUGE_STATES.len()],
    pub opened_total: u64,
    pub closed_total: u64,
    /// Closes per [`CLOSE_REASONS`]; they sum to `closed_total`.
    pub closed_by_reason: [u64; CLOSE_REASONS.len()],
    /// Connections the kernel gave up on (ETIMEDOUT).
    pub timeouts_total: u64,
    pub lifetime: Histogram,
    /// Open connections older than each of [`OPEN_BOUNDS`].
    pub age_over: [u64; OPEN_BOUNDS.len()],
    /// Open connections idle (no data either way) longer than each of [`OPEN_BOUNDS`].
    pub idle_over: [u64; OPEN_BOUNDS.len()],
    /// Age of the oldest open connection in seconds (0 when none is open).
    pub oldest_age_seconds: f64,
    /// Open connections whose retransmission timer has fired and not yet recovered.
    pub retransmitting: u64,
}

impl ClassAggregate {
    fn reset_gauges(&mut self) {
        self.states = [0; GAUGE_STATES.len()];
        self.age_over = [0; OPEN_BOUNDS.len()];
        self.idle_over = [0; OPEN_BOUNDS.len()];
        self.oldest_age_seconds = 0.0;
        self.retransmitting = 0;
    }
}

/// Numbers of one watched port.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortAggregate {
    pub listening: bool,
    /// Connections waiting in the accept queues of the port's listeners.
    pub listen_queue_length: u64,
    /// Sum of the accept backlogs of the port's listeners.
    pub listen_queue_limit: u64,
    pub classes: BTreeMap<ClassId, ClassAggregate>,
    /// Connections that moved from `http` to `websocket`.
    pub upgraded_total: u64,
    /// RSTs per direction and kernel reason.
    pub resets: BTreeMap<(Direction, &'static str), u64>,
}

/// Reset series every watched port has from the start (others appear when first counted).
pub const INITIAL_RESETS: [(Direction, &str); 4] = [
    (Direction::Received, RECEIVED_REASON),
    (Direction::Sent, "no-socket"),
    (Direction::Sent, "abort-on-close"),
    (Direction::Sent, "abort-on-data"),
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates {
    pub ports: BTreeMap<u16, PortAggregate>,
    /// Listening ports not watched because of the port cap, in the last sample.
    pub unwatched_listening_ports: u64,
}

impl Aggregates {
    /// Folds one sample in: gauges are rebuilt from `snapshot`/`views`, counters advance by
    /// `events`. Every watched port gets the series of every class it can have, at 0 if empty.
    pub fn apply(
        &mut self,
        snapshot: &Snapshot,
        views: &[SocketView],
        events: &[LifecycleEvent],
        outcomes: &[Outcome],
        classifier: &Classifier,
    ) {
        let now = snapshot.taken_at.monotonic_ms;
        for port in self.ports.values_mut() {
            port.listening = false;
            port.listen_queue_length = 0;
            port.listen_queue_limit = 0;
            port.classes
                .values_mut()
                .for_each(ClassAggregate::reset_gauges);
        }
        for &port in &snapshot.watched_ports {
            let pa = self.ports.entry(port).or_default();
            for class in classifier.initial_classes(port) {
                pa.classes.entry(class).or_default();
            }
            if snapshot.trace_running {
                for key in INITIAL_RESETS {
                    pa.resets.entry(key).or_default();
                }
            }
        }
        for listener in &snapshot.listeners {
            if let Some(port) = self.ports.get_mut(&listener.port) {
                port.listening = true;
                port.listen_queue_length += u64::from(listener.queue_length);
                port.listen_queue_limit += u64::from(listener.queue_limit);
            }
        }
        for (record, view) in snapshot.sockets.iter().zip(views) {
            if !view.counted {
                continue;
            }
            let Some(slot) = record.state.gauge_index() else {
                continue;
            };
            let agg = self
                .ports
                .entry(record.local_port)
                .or_default()
                .classes
                .entry(view.class)
                .or_default();
            agg.states[slot] += 1;
            let Some(first_seen) = view.first_seen_ms else {
                continue;
            };
            let age_ms = now.saturating_sub(first_seen);
            let age_s = age_ms as f64 / 1000.0;
            if age_s > agg.oldest_age_seconds {
                agg.oldest_age_seconds = age_s;
            }
            count_over(&mut agg.age_over, age_ms);
            if let Some(info) = &record.info {
                count_over(&mut agg.idle_over, idle_ms(info, age_ms, view.preexisting));
            }
            if record.is_retransmitting() {
                agg.retransmitting += 1;
            }
        }
        for event in events {
            match *event {
                LifecycleEvent::Opened { port, class, .. } => {
                    self.class_mut(port, class).opened_total += 1;
                }
                LifecycleEvent::Upgraded { port, .. } => {
                    self.ports.entry(port).or_default().upgraded_total += 1;
                }
                LifecycleEvent::Closed {
                    port,
                    class,
                    lifetime_ms,
                    reason,
                    ..
                } => {
                    let agg = self.class_mut(port, class);
                    agg.closed_total += 1;
                    agg.closed_by_reason[reason.index()] += 1;
                    if let Some(ms) = lifetime_ms {
                        agg.lifetime.observe(ms as f64 / 1000.0);
                    }
                }
            }
        }
        for outcome in outcomes {
            self.count(outcome);
        }
    }

    fn count(&mut self, outcome: &Outcome) {
        match *outcome {
            Outcome::Reset {
                port,
                direction,
                reason,
            } => {
                *self
                    .ports
                    .entry(port)
                    .or_default()
                    .resets
                    .entry((direction, reason))
                    .or_default() += 1;
            }
            Outcome::Timeout { port, class } => self.class_mut(port, class).timeouts_total += 1,
        }
    }

    fn class_mut(&mut self, port: u16, class: ClassId) -> &mut ClassAggregate {
        self.ports
            .entry(port)
            .or_default()
            .classes
            .entry(class)
            .or_default()
    }

    /// Forgets ports for which `keep` is false (no longer watched, nothing left to follow).
    pub fn retain_ports(&mut self, mut keep: impl FnMut(u16) -> bool) {
        self.ports.retain(|&p, _| keep(p));
    }
}

fn count_over(buckets: &mut [u64; OPEN_BOUNDS.len()], value_ms: u64) {
    for (slot, &bound) in buckets.iter_mut().zip(OPEN_BOUNDS.iter()) {
        if value_ms >= bound * 1000 {
            *slot += 1;
        } else {
            break;
        }
    }
}
