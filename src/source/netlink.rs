//! sock_diag socket I/O: sends a dump request, receives every datagram of the reply and hands
//! the bytes to [`super::decode`]. Interprets nothing itself.
//!
//! A dump that ends in an error (NLMSG_ERROR, a negative NLMSG_DONE status, a truncated
//! datagram, a decode failure, a receive timeout) is an error: the records of a partial dump are
//! discarded and the socket is reopened for the next dump, so that stale replies of the failed
//! dump are never read as the next one's.

use std::time::Duration;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use super::decode::{decode_datagram, Progress};
use super::request::{build_request, DumpSpec};
use super::SourceError;
use crate::model::socket::SocketRecord;

/// Receive buffer for dump replies. The kernel sizes dump datagrams after the reader's buffer,
/// up to 32 KiB; a larger buffer is never filled further, a smaller one truncates.
pub const RECV_BUFFER: usize = 64 * 1024;
/// A dump that has not finished after this long is abandoned.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SockDiag {
    socket: Option<Socket>,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    pub fn new() -> Self {
        SockDiag {
            socket: None,
            buf: vec![0; RECV_BUFFER],
            seq: 0,
        }
    }

    fn socket(&mut self) -> Result<&Socket, SourceError> {
        if self.socket.is_none() {
            let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(SourceError::Socket)?;
            socket.bind_auto().map_err(SourceError::Socket)?;
            socket
                .connect(&SocketAddr::new(0, 0))
                .map_err(SourceError::Socket)?;
            set_recv_timeout(&socket, RECV_TIMEOUT).map_err(SourceError::Socket)?;
            self.socket = Some(socket);
        }
        Ok(self.socket.as_ref().expect("socket was just set"))
    }

    /// Runs one dump, appending its records to `out`. On error `out` is left as it was.
    pub fn dump(
        &mut self,
        spec: &DumpSpec,
        out: &mut Vec<SocketRecord>,
    ) -> Result<(), SourceError> {
        let start = out.len();
        let result = self.dump_inner(spec, out);
        if result.is_err() {
            out.truncate(start);
            self.socket = None;
        }
        result
    }

    fn dump_inner(
        &mut self,
        spec: &DumpSpec,
        out: &mut Vec<SocketRecord>,
    ) -> Result<(), SourceError> {
        self.seq = self.seq.wrapping_add(1);
        let request = build_request(spec, self.seq);
        self.socket()?;
        let socket = self.socket.as_ref().expect("socket opened above");
        socket.send(&request, 0).map_err(SourceError::Socket)?;
        loop {
            let n = socket
                .recv(&mut &mut self.buf[..], libc::MSG_TRUNC)
                .map_err(SourceError::Socket)?;
            if n > self.buf.len() {
                return Err(SourceError::Truncated {
                    datagram: n,
                    buffer: self.buf.len(),
                });
            }
            if n == 0 {
                return Err(SourceError::Socket(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "netlink socket returned 0 bytes before NLMSG_DONE",
                )));
            }
            if decode_datagram(&self.buf[..n], out)? == Progress::Done {
                return Ok(());
            }
        }
    }
}

impl Default for SockDiag {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(unsafe_code)] // the one setsockopt netlink-sys does not wrap
pub(crate) fn set_recv_timeout(socket: &Socket, timeout: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval that outlives the call, and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
