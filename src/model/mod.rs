//! The pure model: snapshots in, lifecycle events and aggregates out. Reads no clock and no
//! kernel; everything it knows arrives in a [`socket::Snapshot`].

pub mod aggregate;
pub mod classify;
pub mod socket;
pub mod tracker;
pub mod watch;

use aggregate::Aggregates;
use classify::Classifier;
use socket::Snapshot;
use tracker::{LifecycleEvent, SocketView, Tracker};

/// The model's stages wired in order: tracker -> classifier -> aggregates.
#[derive(Debug)]
pub struct Model {
    pub tracker: Tracker,
    pub classifier: Classifier,
    pub aggregates: Aggregates,
    events: Vec<LifecycleEvent>,
    views: Vec<SocketView>,
}

impl Model {
    pub fn new(classifier: Classifier) -> Self {
        Model {
            tracker: Tracker::new(),
            classifier,
            aggregates: Aggregates::default(),
            events: Vec::new(),
            views: Vec::new(),
        }
    }

    /// The tracker's verdict on each socket of the last snapshot, aligned with its `sockets`.
    pub fn views(&self) -> &[SocketView] {
        &self.views
    }

    /// Folds one snapshot in and returns the lifecycle events it produced.
    pub fn observe(&mut self, snapshot: &Snapshot) -> &[LifecycleEvent] {
        self.events.clear();
        self.tracker.observe(
            snapshot,
            &self.classifier,
            &mut self.events,
            &mut self.views,
        );
        self.aggregates
            .apply(snapshot, &self.views, &self.events, &self.classifier);
        &self.events
    }
}
