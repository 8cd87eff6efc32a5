//! The watched network namespace as tracepoints need it: tracepoints fire for every namespace
//! and a reset sent without a socket carries only addresses, so the model needs the
//! namespace's own interface addresses and whether any other namespace exists.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Addresses of the calling thread's network namespace's interfaces (getifaddrs).
#[allow(unsafe_code)] // getifaddrs: no safe wrapper in std or libc
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is freed below, once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET means the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 means the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether the namespace of the calling thread is the only network namespace on the host:
/// no task under `procfs` and no bind mount under `/run/netns` is in another one. Tasks whose
/// namespace cannot be read (other users' without privileges) count as elsewhere.
pub fn sole_network_namespace(procfs: &Path) -> bool {
    let Ok(ours) = fs::metadata(procfs.join("thread-self/ns/net")).map(|m| m.ino()) else {
        return false;
    };
    let mut seen = HashSet::new();
    seen.insert(ours);
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.filter_map(|e| e.ok()) {
            if let Ok(m) = fs::metadata(e.path()) {
                seen.insert(m.ino());
            }
        }
    }
    let Ok(procs) = fs::read_dir(procfs) else {
        return false;
    };
    for p in procs.filter_map(|e| e.ok()) {
        if !p
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
            continue; // exited meanwhile
        };
        for t in tasks.filter_map(|e| e.ok()) {
            match fs::metadata(t.path().join("ns/net")) {
                Ok(m) => {
                    seen.insert(m.ino());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => return false,
            }
            if seen.len() > 1 {
                return false;
            }
        }
    }
    seen.len() == 1
}

/// Moves the calling thread into the network namespace of the namespace file `path` (a bind
/// mount under /run/netns, or /proc/PID/ns/net). Sockets the thread creates afterwards, and the
/// threads it spawns, belong to that namespace; other threads are not affected. Needs
/// CAP_SYS_ADMIN (and, for another user's /proc/PID, CAP_SYS_PTRACE to open the file).
#[allow(unsafe_code)] // setns: no safe wrapper in std or libc
pub fn enter(path: &Path) -> std::io::Result<()> {
    let file = fs::File::open(path)?;
    // SAFETY: the descriptor is open for the duration of the call; CLONE_NEWNET makes the
    // kernel refuse (EINVAL) a file that is not a network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EINVAL) => " (not a network namespace file)",
            Some(libc::EPERM) => " (needs CAP_SYS_ADMIN)",
            _ => "",
        };
        return Err(std::io::Error::new(e.kind(), format!("{e}{hint}")));
    }
    Ok(())
}
