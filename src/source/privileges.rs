//! Least privilege: drainwatch keeps only the capabilities its configured sources need, and
//! gives up those needed only to start them once they run.
//!
//! | what | capability | when |
//! |---|---|---|
//! | sock_diag dumps, destroy events, procfs counters | none | |
//! | the 16 MiB destroy-event buffer (`SO_RCVBUFFORCE`) | CAP_NET_ADMIN | start-up |
//! | entering another network namespace (`--netns`) | CAP_SYS_ADMIN, CAP_SYS_PTRACE for `pid:` | start-up |
//! | tracepoints: the ftrace instance (root-owned tracefs files) | CAP_DAC_OVERRIDE | running |
//! | tracepoints: the namespace census (other users' `/proc/*/task/*/ns/net`) | CAP_SYS_PTRACE | running |
//!
//! Capabilities are per thread in Linux. [`restrict_process`] runs first in `main`, before any
//! thread exists, so every thread inherits at most the start-up set (and the bounding set is cut
//! to it, so nothing can regain more); [`drop_startup`] is then called by each thread once its
//! start-up is done (the samplers after entering their namespace and opening their sources,
//! the event reader threads at their start, `main` before the HTTP runtime starts).
//! Without privileges every call is a no-op: there is nothing to drop.

use std::sync::atomic::{AtomicU64, Ordering};

pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;

/// Names of the capabilities drainwatch may keep, for logs and metrics.
pub const NAMES: [(u32, &str); 4] = [
    (CAP_DAC_OVERRIDE, "dac_override"),
    (CAP_NET_ADMIN, "net_admin"),
    (CAP_SYS_PTRACE, "sys_ptrace"),
    (CAP_SYS_ADMIN, "sys_admin"),
];

/// A set of capabilities, bit n for capability n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn with(self, cap: u32) -> CapSet {
        CapSet(self.0 | 1 << cap)
    }
    pub fn has(self, cap: u32) -> bool {
        self.0 & (1 << cap) != 0
    }
    pub fn union(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }
    /// The names of the capabilities in the set that drainwatch knows.
    pub fn names(self) -> Vec<&'static str> {
        NAMES
            .iter()
            .filter(|(c, _)| self.has(*c))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// What the configured sources need: at start-up, and while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub startup: CapSet,
    pub running: CapSet,
}

impl Needs {
    pub fn of(destroy_events: bool, tracepoints: bool, other_netns: bool) -> Needs {
        let mut running = CapSet::default();
        if tracepoints {
            running = running.with(CAP_DAC_OVERRIDE).with(CAP_SYS_PTRACE);
        }
        let mut startup = running;
        if destroy_events {
            startup = startup.with(CAP_NET_ADMIN);
        }
        if other_netns {
            startup = startup.with(CAP_SYS_ADMIN).with(CAP_SYS_PTRACE);
        }
        Needs { startup, running }
    }
}

/// The set [`drop_startup`] keeps, fixed by [`restrict_process`].
static RUNNING: AtomicU64 = AtomicU64::new(u64::MAX);

const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted) sets.
#[allow(unsafe_code)] // capget: no wrapper in std or libc
pub fn current() -> std::io::Result<(CapSet, CapSet)> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version-3 header and two data structs, as capget(2) requires.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| CapSet(u64::from(lo) | u64::from(hi) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Sets the calling thread's effective and permitted sets to `keep` ∩ what it has now (it can
/// only shrink), and its inheritable set to nothing.
#[allow(unsafe_code)] // capset: no wrapper in std or libc
fn set_thread(keep: CapSet) -> std::io::Result<()> {
    let (_, permitted) = current()?;
    let keep = CapSet(keep.0 & permitted.0);
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let lo = keep.0 as u32;
    let hi = (keep.0 >> 32) as u32;
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: a version-3 header and two data structs, as capset(2) requires.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Called once, first thing in `main`, before any thread: keeps `needs.startup` and drops
/// every other capability from the bounding set (so no thread can regain it), the ambient set
/// and the thread's sets. Returns what is kept (∩ what the process had).
#[allow(unsafe_code)] // prctl
pub fn restrict_process(needs: Needs) -> CapSet {
    RUNNING.store(needs.running.0, Ordering::Relaxed);
    let Ok((_, permitted)) = current() else {
        return CapSet::default();
    };
    if permitted.0 == 0 {
        return CapSet::default(); // unprivileged: nothing to drop
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    // Bounding set first: dropping from it needs CAP_SETPCAP, which the thread sets drop next.
    for cap in 0..64u32 {
        if !needs.startup.has(cap) {
            // SAFETY: prctl with integer arguments only; EINVAL past the last capability.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
        }
    }
    if let Err(e) = set_thread(needs.startup) {
        tracing::warn!("cannot drop capabilities: {e}");
    }
    current()
        .map(|(effective, _)| effective)
        .unwrap_or_default()
}

/// Gives up, in the calling thread, what only start-up needed (CAP_NET_ADMIN for the event
/// buffer, CAP_SYS_ADMIN for setns): keeps the running set fixed by [`restrict_process`].
/// A no-op when that was never called (tests, tools) or without privileges.
pub fn drop_startup() {
    let running = RUNNING.load(Ordering::Relaxed);
    if running == u64::MAX {
        return;
    }
    match current() {
        Ok((_, permitted)) if permitted.0 & !running == 0 => {}
        Ok(_) => {
            if let Err(e) = set_thread(CapSet(running)) {
                tracing::warn!("cannot drop start-up capabilities: {e}");
            }
        }
        Err(_) => {}
    }
}
