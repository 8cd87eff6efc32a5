//! The classifier stage: decides the class of each connection (`http`, `websocket`, `probe`,
//! user-named classes, or `unclassified`).
//!
//! Today classes come from configured port rules only; a connection on a port without a rule is
//! `unclassified`. The stage sits between the tracker and the aggregates so that evidence-based
//! classification can replace [`Classifier::classify`] without touching either side.

use std::collections::HashMap;

use super::socket::SocketRecord;

/// Index into the [`ClassTable`]; small so that per-connection state stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClassId(pub u8);

/// The class every connection has when nothing is known about it.
pub const UNCLASSIFIED: ClassId = ClassId(0);

/// Class names, bounded by configuration (they become label values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassTable {
    names: Vec<String>,
}

impl Default for ClassTable {
    fn default() -> Self {
        ClassTable {
            names: vec!["unclassified".to_string()],
        }
    }
}

impl ClassTable {
    /// Returns the id of `name`, adding it when new. At most 255 names exist.
    pub fn intern(&mut self, name: &str) -> Option<ClassId> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Some(ClassId(i as u8));
        }
        if self.names.len() >= usize::from(u8::MAX) {
            return None;
        }
        self.names.push(name.to_string());
        Some(ClassId((self.names.len() - 1) as u8))
    }

    pub fn name(&self, id: ClassId) -> &str {
        self.names
            .get(usize::from(id.0))
            .map(String::as_str)
            .unwrap_or("unclassified")
    }
}

/// Port rules: local port -> class.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    table: ClassTable,
    by_port: HashMap<u16, ClassId>,
}

impl Classifier {
    /// Builds the classifier from `(port, class name)` rules.
    pub fn from_port_rules<'a>(rules: impl IntoIterator<Item = (u16, &'a str)>) -> Self {
        let mut table = ClassTable::default();
        let mut by_port = HashMap::new();
        for (port, name) in rules {
            if let Some(id) = table.intern(name) {
                by_port.insert(port, id);
            }
        }
        Classifier { table, by_port }
    }

    pub fn table(&self) -> &ClassTable {
        &self.table
    }

    /// The class a connection on `port` has before any evidence about it.
    pub fn port_default(&self, port: u16) -> ClassId {
        self.by_port.get(&port).copied().unwrap_or(UNCLASSIFIED)
    }

    /// The class of one connection.
    pub fn classify(&self, record: &SocketRecord) -> ClassId {
        self.port_default(record.local_port)
    }
}
