//! Drain readiness: per watched port, the recent history of new and active connections and the
//! verdict it supports ("safe to remove"), for any thresholds.
//!
//! A port is **drained** when no new connection (health probes excluded) arrived for `quiet`,
//! and the active connections (probes excluded) stayed at or below the thresholds for the last
//! `hold_samples` samples: at most `max_active` in all and at most `max_websocket` WebSocket
//! sessions. Its phase is `serving` while new connections arrive (or before `quiet` has been
//! observed), `draining` once they stopped while connections remain, `drained`, and `stopped`
//! when no listener is left. A drain is **stalled** when, over the last
//! [`STALL_WINDOW_MS`], the active connections above the thresholds did not decrease. The
//! **ETA** extrapolates the decrease of the active connections over the last [`ETA_WINDOW_MS`]
//! (least squares) to the thresholds.
//!
//! Pure: time comes from the snapshots.

use std::collections::{BTreeMap, VecDeque};

use super::classify::{PROBE, WEBSOCKET};
use super::socket::{Snapshot, TcpState};
use super::tracker::{LifecycleEvent, SocketView};

/// History kept per port (at 1 s samples: 10 minutes).
const HISTORY_MS: u64 = 600_000;
/// Window over which a drain that does not decrease is stalled.
pub const STALL_WINDOW_MS: u64 = 60_000;
/// Window of the decay fit behind the ETA.
pub const ETA_WINDOW_MS: u64 = 60_000;

/// When a port counts as drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainThresholds {
    /// Active connections (every class but probes) allowed when drained.
    pub max_active: u64,
    /// WebSocket sessions allowed when drained.
    pub max_websocket: u64,
    /// How long no new connection may have arrived.
    pub quiet_ms: u64,
    /// Consecutive samples within the thresholds.
    pub hold_samples: usize,
}

impl Default for DrainThresholds {
    fn default() -> Self {
        DrainThresholds {
            max_active: 0,
            max_websocket: 0,
            quiet_ms: 10_000,
            hold_samples: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Serving,
    Draining,
    Drained,
    Stopped,
}

/// Labels of [`Phase`], in order.
pub const PHASES: [&str; 4] = ["serving", "draining", "drained", "stopped"];

impl Phase {
    pub fn label(self) -> &'static str {
        PHASES[self as usize]
    }
}

/// One sample of one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSample {
    pub at_ms: u64,
    pub listening: bool,
    /// Connections opened in this sample, probes excluded.
    pub new: u64,
    /// Active connections (ESTABLISHED or CLOSE_WAIT: the application has not closed them),
    /// probes excluded, WebSocket sessions included.
    pub active: u64,
    /// Open WebSocket sessions.
    pub websocket: u64,
    /// Age of the oldest open connection (probes excluded), ms.
    pub oldest_ms: u64,
}

/// A drain start marked by an operator (`POST /drain/start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainMark {
    pub at_ms: u64,
    pub unix_ms: u64,
    /// Connections (probes excluded) opened since: how long the load balancer kept sending.
    pub opened_after: u64,
}

/// What is known of one port's drain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortDrain {
    pub history: VecDeque<DrainSample>,
    /// Sample time of the last non-probe opening seen.
    pub last_new_ms: Option<u64>,
    pub mark: Option<DrainMark>,
}

/// The verdict for one port under given thresholds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub port: u16,
    pub phase: String,
    pub ready: bool,
    pub stalled: bool,
    /// Seconds until the thresholds are reached at the observed rate; 0 when within them,
    /// `None` when the active connections are not decreasing.
    pub eta_seconds: Option<f64>,
    /// Change of the connections above the thresholds, per second, over the last 60 s (least
    /// squares; negative while draining).
    pub trend_per_second: Option<f64>,
    pub active: u64,
    pub websocket: u64,
    /// Non-probe connections opened within the quiet window.
    pub new_in_quiet_window: u64,
    /// Seconds since the last non-probe opening (`None`: none seen since drainwatch started).
    pub seconds_since_last_new: Option<f64>,
    pub oldest_seconds: f64,
    /// Why the port is not ready (empty when it is).
    pub reason: String,
}

impl PortDrain {
    /// Appends one sample (in time order). `apply` does this from snapshots; `drainwatch wait
    /// --prometheus` from the series Prometheus kept.
    pub fn push(&mut self, sample: DrainSample) {
        // A listener back after being gone is a new server process: its drain is not the
        // marked one any more.
        if sample.listening && self.history.back().is_some_and(|s| !s.listening) {
            self.mark = None;
        }
        if sample.new > 0 {
            self.last_new_ms = Some(sample.at_ms);
        }
        if let Some(mark) = &mut self.mark {
            if sample.at_ms > mark.at_ms {
                mark.opened_after += sample.new;
            }
        }
        self.history.push_back(sample);
        while self
            .history
            .front()
            .is_some_and(|s| sample.at_ms.saturating_sub(s.at_ms) > HISTORY_MS)
        {
            self.history.pop_front();
        }
    }

    fn within(s: &DrainSample, t: &DrainThresholds) -> bool {
        s.active <= t.max_active && s.websocket <= t.max_websocket
    }

    /// The verdict for `port` under `t`.
    pub fn verdict(&self, port: u16, t: &DrainThresholds) -> Verdict {
        let Some(last) = self.history.back().copied() else {
            return Verdict {
                port,
                phase: Phase::Serving.label().to_string(),
                ready: false,
                stalled: false,
                eta_seconds: None,
                trend_per_second: None,
                active: 0,
                websocket: 0,
                new_in_quiet_window: 0,
                seconds_since_last_new: None,
                oldest_seconds: 0.0,
                reason: "no sample yet".into(),
            };
        };
        let now = last.at_ms;
        let first = self.history.front().map_or(now, |s| s.at_ms);
        // A sample's openings arrived between the previous sample and it: it is in the window
        // when the middle of that span is. Sample times jitter by milliseconds, so a boundary
        // drawn at the sample times themselves took one sample more or fewer from run to run
        // (two samplers of the same port then disagreed for a whole sample).
        let mut prev_at = None;
        let mut new_in_quiet: u64 = 0;
        for s in &self.history {
            let mid = prev_at.map_or(s.at_ms, |p: u64| p + s.at_ms.saturating_sub(p) / 2);
            if now.saturating_sub(mid) < t.quiet_ms {
                new_in_quiet += s.new;
            }
            prev_at = Some(s.at_ms);
        }
        // The first sample's openings are connections found open at start: not arrivals.
        let observed_quiet = now.saturating_sub(first) >= t.quiet_ms;
        let quiet = new_in_quiet == 0 && observed_quiet;
        let held = self.history.len() >= t.hold_samples.max(1)
            && self
                .history
                .iter()
                .rev()
                .take(t.hold_samples.max(1))
                .all(|s| Self::within(s, t));
        let phase = if !last.listening {
            Phase::Stopped
        } else if !quiet {
            Phase::Serving
        } else if held {
            Phase::Drained
        } else {
            Phase::Draining
        };
        let ready = held && (quiet || phase == Phase::Stopped);
        let stalled = !Self::within(&last, t)
            && phase != Phase::Serving
            && now.saturating_sub(first) >= STALL_WINDOW_MS
            && self
                .history
                .iter()
                .rev()
                .find(|s| now.saturating_sub(s.at_ms) >= STALL_WINDOW_MS)
                .is_some_and(|s| {
                    excess(s.active, s.websocket, t) <= excess(last.active, last.websocket, t)
                });
        let trend = self.trend(t);
        let eta_seconds = if Self::within(&last, t) {
            Some(0.0)
        } else {
            trend
                .filter(|slope| *slope < 0.0)
                .map(|slope| excess(last.active, last.websocket, t) as f64 / -slope)
        };
        let mut reasons = Vec::new();
        if !observed_quiet {
            reasons.push(format!(
                "watched for {:.0}s, less than the quiet window of {:.0}s",
                (now - first) as f64 / 1000.0,
                t.quiet_ms as f64 / 1000.0
            ));
        } else if new_in_quiet > 0 {
            reasons.push(format!(
                "{new_in_quiet} new connections in the last {:.0}s",
                t.quiet_ms as f64 / 1000.0
            ));
        }
        let oldest = format_duration(last.oldest_ms);
        if last.websocket > t.max_websocket {
            reasons.push(format!(
                "{} websocket connections above threshold {}, oldest {oldest}",
                last.websocket, t.max_websocket
            ));
        }
        if last.active > t.max_active {
            reasons.push(format!(
                "{} active connections above threshold {}, oldest {oldest}",
                last.active, t.max_active
            ));
        }
        if reasons.is_empty() && !held {
            reasons.push(format!(
                "within the thresholds for fewer than {} samples",
                t.hold_samples
            ));
        }
        Verdict {
            port,
            phase: phase.label().to_string(),
            ready,
            stalled,
            eta_seconds,
            trend_per_second: trend,
            active: last.active,
            websocket: last.websocket,
            new_in_quiet_window: new_in_quiet,
            seconds_since_last_new: self
                .last_new_ms
                .map(|at| now.saturating_sub(at) as f64 / 1000.0),
            oldest_seconds: last.oldest_ms as f64 / 1000.0,
            reason: if ready {
                String::new()
            } else {
                reasons.join("; ")
            },
        }
    }

    /// Slope (per second) of a least-squares line through the excess over the thresholds of
    /// the samples of the last [`ETA_WINDOW_MS`]; `None` with fewer than 3 samples.
    fn trend(&self, t: &DrainThresholds) -> Option<f64> {
        let last = self.history.back()?;
        let points: Vec<(f64, f64)> = self
            .history
            .iter()
            .filter(|s| last.at_ms.saturating_sub(s.at_ms) <= ETA_WINDOW_MS)
            .map(|s| {
                (
                    s.at_ms as f64 / 1000.0,
                    excess(s.active, s.websocket, t) as f64,
                )
            })
            .collect();
        if points.len() < 3 {
            return None;
        }
        let n = points.len() as f64;
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        if sxx <= 0.0 {
            return None;
        }
        Some(sxy / sxx)
    }
}

/// How far `active` connections and `websocket` sessions are above the thresholds (the larger
/// of the two excesses).
pub fn excess(active: u64, websocket: u64, t: &DrainThresholds) -> u64 {
    active
        .saturating_sub(t.max_active)
        .max(websocket.saturating_sub(t.max_websocket))
}

fn format_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Drain state of every watched port.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drains {
    pub ports: BTreeMap<u16, PortDrain>,
}

impl Drains {
    /// Marks the start of a drain of `port` at the sample time `at_ms` (`unix_ms` for display):
    /// openings of later samples count as late arrivals.
    pub fn mark(&mut self, port: u16, at_ms: u64, unix_ms: u64) {
        self.ports.entry(port).or_default().mark = Some(DrainMark {
            at_ms,
            unix_ms,
            opened_after: 0,
        });
    }

    /// Folds one sample in, from the snapshot, the tracker's views and its lifecycle events.
    pub fn apply(&mut self, snapshot: &Snapshot, views: &[SocketView], events: &[LifecycleEvent]) {
        let now = snapshot.taken_at.monotonic_ms;
        let mut samples: BTreeMap<u16, DrainSample> = snapshot
            .watched_ports
            .iter()
            .map(|&port| {
                (
                    port,
                    DrainSample {
                        at_ms: now,
                        listening: false,
                        new: 0,
                        active: 0,
                        websocket: 0,
                        oldest_ms: 0,
                    },
                )
            })
            .collect();
        for l in &snapshot.listeners {
            if let Some(s) = samples.get_mut(&l.port) {
                s.listening = true;
            }
        }
        for (record, view) in snapshot.sockets.iter().zip(views) {
            // Active: the connection still carries (or may carry) data both ways. Once the
            // application closed it (FIN_WAIT*, LAST_ACK, CLOSING), nothing is left to drain.
            let active = matches!(record.state, TcpState::Established | TcpState::CloseWait);
            if !view.counted || !active || record.is_remnant() {
                continue;
            }
            let Some(first_seen) = view.first_seen_ms else {
                continue;
            };
            if view.class == PROBE {
                continue;
            }
            if let Some(s) = samples.get_mut(&record.local_port) {
                s.active += 1;
                if view.class == WEBSOCKET {
                    s.websocket += 1;
                }
                s.oldest_ms = s.oldest_ms.max(now.saturating_sub(first_seen));
            }
        }
        for event in events {
            if let LifecycleEvent::Opened { port, class, .. } = *event {
                if class != PROBE {
                    if let Some(s) = samples.get_mut(&port) {
                        s.new += 1;
                    }
                }
            }
        }
        for (port, sample) in samples {
            self.ports.entry(port).or_default().push(sample);
        }
    }

    /// Forgets ports for which `keep` is false.
    pub fn retain_ports(&mut self, mut keep: impl FnMut(u16) -> bool) {
        self.ports.retain(|&p, _| keep(p));
    }
}
