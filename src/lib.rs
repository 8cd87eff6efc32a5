//! drainwatch: per-port TCP connection lifecycle for backends behind L4 load balancers.
//!
//! Data flows one way: kernel -> [`source`] (I/O, then pure decoding) -> [`model::socket::Snapshot`]
//! -> [`model`] (tracker -> classifier -> aggregates) -> [`exposition`] (Prometheus metrics over
//! HTTP). [`app`] wires the stages; [`config`] validates flags and the configuration file.

#![deny(unsafe_code)]

pub mod app;
pub mod config;
pub mod exposition;
#[doc(hidden)]
pub mod fuzz;
pub mod model;
pub mod source;
pub mod tools;
