//! Which local ports a sample watches.
//!
//! With configured ports, exactly those. Without, every port in LISTEN state, rediscovered each
//! sample and capped: ports already watched keep their place, new ports are added in ascending
//! order while room remains, and the ports left over are counted, never silently dropped. A
//! discovered port whose listener went away stays watched while it still has open
//! connections, so that a graceful shutdown (listener closed first, connections draining
//! after) can be followed to the end.

use std::collections::BTreeSet;

#[derive(Debug, Clone)]
pub enum PortSelection {
    Configured(BTreeSet<u16>),
    Discover { max_ports: usize },
}

#[derive(Debug, Clone)]
pub struct Watch {
    selection: PortSelection,
    current: BTreeSet<u16>,
}

/// The outcome of one selection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selected {
    pub ports: Vec<u16>,
    /// Listening ports left out because of the cap.
    pub over_cap: u64,
}

impl Watch {
    pub fn new(selection: PortSelection) -> Self {
        Watch {
            selection,
            current: BTreeSet::new(),
        }
    }

    /// True when ports come from discovery, so a listener dump must precede selection.
    pub fn discovers(&self) -> bool {
        matches!(self.selection, PortSelection::Discover { .. })
    }

    /// Chooses the ports of this sample from the listening ports and the ports that still have
    /// open tracked connections.
    pub fn select(&mut self, listening: &BTreeSet<u16>, draining: &BTreeSet<u16>) -> Selected {
        match &self.selection {
            PortSelection::Configured(ports) => {
                self.current = ports.clone();
                Selected {
                    ports: ports.iter().copied().collect(),
                    over_cap: 0,
                }
            }
            PortSelection::Discover { max_ports } => {
                let max_ports = *max_ports;
                let mut next: BTreeSet<u16> = self
                    .current
                    .iter()
                    .copied()
                    .filter(|p| listening.contains(p) || draining.contains(p))
                    .collect();
                let mut over_cap = 0;
                for &port in listening {
                    if next.contains(&port) {
                        continue;
                    }
                    if next.len() < max_ports {
                        next.insert(port);
                    } else {
                        over_cap += 1;
                    }
                }
                self.current = next;
                Selected {
                    ports: self.current.iter().copied().collect(),
                    over_cap,
                }
            }
        }
    }
}
