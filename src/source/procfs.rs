//! Host-wide TCP counters from `/proc/net/snmp` (through the procfs crate) and
//! `/proc/net/netstat` (TcpExt; not parsed by procfs, parsed here).
//!
//! The root is configurable (`--path.procfs`) so fixtures can stand in for `/proc`. Parsing is
//! pure ([`parse_netstat`]); reading is [`read_host_counters`]. `/proc/net` follows the reader's
//! network namespace.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use procfs::FromBufRead;

/// The TcpExt counters exported under `drainwatch_host_tcp_aborts_total{reason}`.
pub const ABORT_REASONS: [(&str, &str); 6] = [
    ("TCPAbortOnData", "data"),
    ("TCPAbortOnClose", "close"),
    ("TCPAbortOnMemory", "memory"),
    ("TCPAbortOnTimeout", "timeout"),
    ("TCPAbortOnLinger", "linger"),
    ("TCPAbortFailed", "failed"),
];

/// Host-wide TCP counters (all monotonic, since boot, for the reader's network namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCounters {
    pub passive_opens: u64,
    pub active_opens: u64,
    /// Tcp OutRsts.
    pub resets_sent: u64,
    /// Tcp EstabResets.
    pub established_resets: u64,
    pub attempt_fails: u64,
    /// TcpExt TCPTimeouts.
    pub retransmit_timeouts: u64,
    /// TcpExt TCPAbortOn* by the reason of [`ABORT_REASONS`], in that order.
    pub aborts: [u64; ABORT_REASONS.len()],
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
}

/// Parses `/proc/net/netstat`: pairs of lines `Prefix: Name Name ...` / `Prefix: 1 2 ...`.
/// Returns `prefix -> name -> value`.
pub fn parse_netstat(
    reader: impl BufRead,
) -> Result<HashMap<String, HashMap<String, u64>>, String> {
    let mut out: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut lines = reader.lines();
    let mut line_no = 0;
    while let Some(header) = lines.next() {
        line_no += 1;
        let header = header.map_err(|e| e.to_string())?;
        if header.trim().is_empty() {
            continue;
        }
        let values = lines
            .next()
            .ok_or_else(|| format!("line {line_no}: header without a value line"))?
            .map_err(|e| e.to_string())?;
        line_no += 1;
        let (prefix, names) = header
            .split_once(':')
            .ok_or_else(|| format!("line {}: no ':' in header", line_no - 1))?;
        let (vprefix, nums) = values
            .split_once(':')
            .ok_or_else(|| format!("line {line_no}: no ':' in value line"))?;
        if prefix != vprefix {
            return Err(format!(
                "line {line_no}: value line is for {vprefix:?}, header for {prefix:?}"
            ));
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let nums: Vec<&str> = nums.split_whitespace().collect();
        if names.len() != nums.len() {
            return Err(format!(
                "line {line_no}: {} names but {} values",
                names.len(),
                nums.len()
            ));
        }
        let section = out.entry(prefix.to_string()).or_default();
        for (name, num) in names.iter().zip(nums) {
            let value = num
                .parse::<u64>()
                .map_err(|_| format!("line {line_no}: {name} = {num:?} is not a counter"))?;
            section.insert((*name).to_string(), value);
        }
    }
    Ok(out)
}

/// Reads both files under `proc_root` (normally `/proc`): those of the calling thread's network
/// namespace (`thread-self/net`, as a sampler thread may have entered another namespace than
/// the process's), or `net/` in a proc tree without `thread-self` (fixtures).
pub fn read_host_counters(proc_root: &Path) -> Result<HostCounters, ProcError> {
    let thread_net = proc_root.join("thread-self/net");
    let net = if thread_net.is_dir() {
        thread_net
    } else {
        proc_root.join("net")
    };
    let snmp_path = net.join("snmp");
    let file = std::fs::File::open(&snmp_path).map_err(|source| ProcError::Io {
        path: snmp_path.display().to_string(),
        source,
    })?;
    let snmp = procfs::net::Snmp::from_buf_read(std::io::BufReader::new(file)).map_err(|e| {
        ProcError::Parse {
            path: snmp_path.display().to_string(),
            message: e.to_string(),
        }
    })?;
    let netstat_path = net.join("netstat");
    let file = std::fs::File::open(&netstat_path).map_err(|source| ProcError::Io {
        path: netstat_path.display().to_string(),
        source,
    })?;
    let netstat =
        parse_netstat(std::io::BufReader::new(file)).map_err(|message| ProcError::Parse {
            path: netstat_path.display().to_string(),
            message,
        })?;
    let empty = HashMap::new();
    let ext = netstat.get("TcpExt").unwrap_or(&empty);
    let get = |k: &str| ext.get(k).copied().unwrap_or(0);
    let mut aborts = [0; ABORT_REASONS.len()];
    for (slot, (key, _)) in aborts.iter_mut().zip(ABORT_REASONS) {
        *slot = get(key);
    }
    Ok(HostCounters {
        passive_opens: snmp.tcp_passive_opens,
        active_opens: snmp.tcp_active_opens,
        resets_sent: snmp.tcp_out_rsts,
        established_resets: snmp.tcp_estab_resets,
        attempt_fails: snmp.tcp_attempt_fails,
        retransmit_timeouts: get("TCPTimeouts"),
        aborts,
        listen_overflows: get("ListenOverflows"),
        listen_drops: get("ListenDrops"),
    })
}
