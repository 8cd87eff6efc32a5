//! The pure model: snapshots in, lifecycle events and aggregates out. Reads no clock and no
//! kernel; everything it knows arrives in a [`socket::Snapshot`].

pub mod aggregate;
pub mod classify;
pub mod drain;
pub mod resets;
pub mod socket;
pub mod tracker;
pub mod watch;

use aggregate::Aggregates;
use classify::Classifier;
use drain::Drains;
use resets::{Attributor, Outcome};
use socket::Snapshot;
use tracker::{LifecycleEvent, SocketView, Tracker};

/// The model's stages wired in order: attributor (joins tracepoint hits to cookies) ->
/// tracker -> classifier -> attributor (counts the joined hits) -> aggregates.
#[derive(Debug)]
pub struct Model {
    pub tracker: Tracker,
    pub classifier: Classifier,
    pub aggregates: Aggregates,
    pub attributor: Attributor,
    pub drains: Drains,
    events: Vec<LifecycleEvent>,
    outcomes: Vec<Outcome>,
    views: Vec<SocketView>,
}

impl Model {
    pub fn new(classifier: Classifier) -> Self {
        Model {
            tracker: Tracker::new(),
            classifier,
            aggregates: Aggregates::default(),
            attributor: Attributor::new(),
            drains: Drains::default(),
            events: Vec::new(),
            outcomes: Vec::new(),
            views: Vec::new(),
        }
    }

    /// The tracker's verdict on each socket of the last snapshot, aligned with its `sockets`.
    pub fn views(&self) -> &[SocketView] {
        &self.views
    }

    /// The lifecycle events of the last snapshot.
    pub fn last_events(&self) -> &[LifecycleEvent] {
        &self.events
    }

    /// Folds one snapshot in and returns the lifecycle events it produced.
    pub fn observe(&mut self, snapshot: &Snapshot) -> &[LifecycleEvent] {
        self.events.clear();
        self.outcomes.clear();
        self.attributor.ingest(snapshot, &self.tracker);
        self.tracker.observe(
            snapshot,
            &self.classifier,
            &self.attributor,
            &mut self.events,
            &mut self.views,
        );
        self.attributor
            .settle(snapshot, &self.tracker, &mut self.outcomes);
        self.aggregates.apply(
            snapshot,
            &self.views,
            &self.events,
            &self.outcomes,
            &self.classifier,
        );
        self.drains.apply(snapshot, &self.views, &self.events);
        &self.events
    }
}
