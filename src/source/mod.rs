//! Sources: the only modules that touch Linux. Each splits I/O (`netlink`, `procfs` readers)
//! from pure decoding (`decode`, `request`, `procfs::parse_netstat`), and produces model types.

pub mod decode;
pub mod events;
pub mod ftrace;
pub mod netlink;
pub mod netns;
pub mod privileges;
pub mod procfs;
pub mod replay;
pub mod request;
pub mod sampler;
pub mod tracepoints;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("dump datagram of {datagram} bytes truncated by a {buffer}-byte buffer")]
    Truncated { datagram: usize, buffer: usize },
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
}
