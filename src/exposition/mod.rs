//! Exposition: what Prometheus and operators see. Reads published model output only.

pub mod http;
pub mod metrics;
pub mod server;
pub mod webconfig;
