//! sock_diag destroy events: the kernel multicasts an `inet_diag_msg` with the final tcp_info of
//! every full TCP socket it frees (groups SKNLGRP_INET_TCP_DESTROY and SKNLGRP_INET6_TCP_DESTROY,
//! as `ss -E` listens to). Any user may subscribe (the kernel sets NL_CFG_F_NONROOT_RECV); only a
//! buffer beyond net.core.rmem_max needs CAP_NET_ADMIN. Events are per network namespace, like
//! the socket that receives them.
//!
//! A reader thread receives events as they come and keeps those of the watched ports; the
//! sampler takes them once per sample, right after the dump. `ENOBUFS` means the receive buffer
//! overflowed and events were lost: it is counted, and the tracker falls back on the dump to
//! find the closes it missed.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use super::decode::decode_datagram;
use super::netlink::set_recv_timeout;
use crate::model::socket::SocketRecord;

/// `SKNLGRP_INET_TCP_DESTROY` and `SKNLGRP_INET6_TCP_DESTROY` (include/uapi/linux/sock_diag.h).
pub const DESTROY_GROUPS: [u32; 2] = [1, 3];
/// Receive buffer asked for with SO_RCVBUFFORCE: 20,000 closes a second for a second.
pub const EVENT_BUFFER_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot subscribe to sock_diag destroy events: {0}")]
    Subscribe(#[source] std::io::Error),
}

/// What one drain found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// The receive buffer overflowed since the last drain (events were lost).
    pub overflowed: bool,
    /// Datagrams that did not decode (counted, skipped).
    pub undecodable: u64,
    /// Events received since the last drain, before the port filter.
    pub received: u64,
}

#[derive(Debug, Default)]
struct Queue {
    records: Vec<SocketRecord>,
    drained: Drained,
}

/// A thread that reads destroy events as they come, so that a burst of closes never waits in
/// the kernel's buffer for the next sample, and keeps those of the watched ports (and those
/// whose local port the kernel zeroed, which only the cookie can attribute).
pub struct DestroyEvents {
    queue: Arc<Mutex<Queue>>,
    ports: Arc<ArcSwap<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The receive buffer the kernel granted (SO_RCVBUFFORCE needs CAP_NET_ADMIN).
    pub buffer_bytes: usize,
}

impl DestroyEvents {
    /// Subscribes in the calling thread's network namespace and starts the reader thread.
    pub fn subscribe() -> Result<Self, EventsError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(EventsError::Subscribe)?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(EventsError::Subscribe)?;
        for group in DESTROY_GROUPS {
            socket
                .add_membership(group)
                .map_err(EventsError::Subscribe)?;
        }
        let forced = force_receive_buffer(&socket, EVENT_BUFFER_BYTES).is_ok();
        if !forced {
            // Without CAP_NET_ADMIN: as large as net.core.rmem_max allows.
            let _ = socket.set_rx_buf_sz(EVENT_BUFFER_BYTES as libc::c_int);
        }
        set_recv_timeout(&socket, READ_TIMEOUT).map_err(EventsError::Subscribe)?;
        let buffer_bytes = socket.get_rx_buf_sz().unwrap_or(0);
        // The kernel reports twice what it grants (bookkeeping included).
        if forced {
            tracing::info!(buffer_bytes, "destroy events subscribed");
        } else {
            tracing::info!(
                buffer_bytes,
                "destroy events subscribed with the buffer net.core.rmem_max allows (CAP_NET_ADMIN would force 16 MiB: fewer events lost in bursts, each one counted)"
            );
        }
        let queue = Arc::new(Mutex::new(Queue::default()));
        let ports = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queue, ports, stop) = (queue.clone(), ports.clone(), stop.clone());
            std::thread::Builder::new()
                .name("destroy-events".into())
                .spawn(move || {
                    // The socket is subscribed: its reader needs no privilege.
                    super::privileges::drop_startup();
                    read_loop(socket, &queue, &ports, &stop)
                })
                .map_err(EventsError::Subscribe)?
        };
        Ok(DestroyEvents {
            queue,
            ports,
            stop,
            thread: Some(thread),
            buffer_bytes,
        })
    }

    /// The local ports whose events are kept from now on.
    pub fn set_ports(&self, ports: &[u16]) {
        if **self.ports.load() != ports {
            self.ports.store(Arc::new(ports.to_vec()));
        }
    }

    /// Moves every event read so far into `out` and returns what went wrong on the way.
    pub fn drain(&self, out: &mut Vec<SocketRecord>) -> Drained {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut queue.records);
        std::mem::take(&mut queue.drained)
    }
}

impl Drop for DestroyEvents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Events kept between two samples at most (about 120 MiB); beyond, they are dropped and counted
/// as an overflow, so a stalled sampler cannot make the reader grow without bound.
const MAX_QUEUED: usize = 1 << 20;

/// How often the reader thread wakes to check that it should stop.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

fn read_loop(socket: Socket, queue: &Mutex<Queue>, ports: &ArcSwap<Vec<u16>>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut batch = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut drained = Drained::default();
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(0) => continue,
            Ok(n) if n > buf.len() => drained.undecodable += 1,
            Ok(n) => {
                if decode_datagram(&buf[..n], &mut batch).is_err() {
                    drained.undecodable += 1;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => drained.overflowed = true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => {
                drained.undecodable += 1;
                std::thread::sleep(READ_TIMEOUT);
            }
        }
        drained.received = batch.len() as u64;
        keep_watched(&mut batch, &ports.load());
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        for record in batch.drain(..) {
            if queue.records.len() < MAX_QUEUED {
                queue.records.push(record);
            } else {
                drained.overflowed = true;
            }
        }
        queue.drained.overflowed |= drained.overflowed;
        queue.drained.undecodable += drained.undecodable;
        queue.drained.received += drained.received;
    }
}

/// Keeps the destroyed sockets of `watched` ports (ascending), and those whose tuple the kernel
/// zeroed (an aborted socket: the tracker joins it on its cookie).
pub fn keep_watched(records: &mut Vec<SocketRecord>, watched: &[u16]) {
    records.retain(|r| r.local_port == 0 || watched.binary_search(&r.local_port).is_ok());
}

#[allow(unsafe_code)] // SO_RCVBUFFORCE, which netlink-sys does not wrap
fn force_receive_buffer(socket: &Socket, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a valid c_int that outlives the call and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
