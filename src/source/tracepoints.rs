//! Kernel tracepoints through a private ftrace instance: `tcp:tcp_send_reset`,
//! `tcp:tcp_receive_reset`, `tcp:tcp_destroy_sock` and `sock:inet_sk_error_report`, read as
//! binary pages from `instances/drainwatch-<pid>/per_cpu/cpuN/trace_pipe_raw`.
//!
//! Why ftrace and not perf_event_open: on this kind of VM, perf samples of events fired from a
//! timer softirq on an idle CPU (retransmission timeouts) went missing while the event count
//! rose, and an ftrace instance recorded all of them (docs/architecture.md, crates.md §6).
//! An instance has its own buffers, events and filters, so drainwatch does not disturb other
//! tracing; it is removed on exit, and a stale one (its process gone) on the next start.
//!
//! Loss is counted by the kernel: the instance runs with `overwrite` off, so a full buffer
//! drops new events and counts them in `per_cpu/cpuN/stats` ("dropped events"); drainwatch
//! reports the increase. Kernel-side filters keep only the watched local ports where the
//! format allows it (`sport`); `tcp_send_reset` has its ports inside `sockaddr` arrays, which
//! filters cannot read, so it is filtered here.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::ftrace::{Decoder, FormatError, EVENTS};
use crate::model::socket::TraceEvent;

/// Per-CPU buffer of the instance: 20,000 closes a second on one CPU (a `tcp_destroy_sock`
/// record is 76 bytes) fill it in about 2.5 s, and the reader empties it ten times a second.
pub const BUFFER_KB: u32 = 4096;
/// How often the reader thread empties the buffers.
const READ_EVERY: Duration = Duration::from_millis(100);
/// Hits kept between two samples at most; beyond, they are dropped and counted as lost.
const MAX_QUEUED: usize = 1 << 20;
const INSTANCE_PREFIX: &str = "drainwatch-";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("tracefs is not mounted at {0} (mount -t tracefs nodev /sys/kernel/tracing, or set --path.tracefs)")]
    NotMounted(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TraceError + '_ {
    move |source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a tracefs file whole. Some of them (events/header_page) answer a short first read and
/// then end of file, so the first read asks for far more than they hold.
fn read_text(path: &Path) -> Result<String, TraceError> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf)
        .map_err(|e| io(path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

fn write_text(path: &Path, text: &str) -> Result<(), TraceError> {
    fs::write(path, text).map_err(io(path))
}

/// A reason label that lives as long as the process: the kernel has a few dozen, read once.
fn intern(label: String) -> &'static str {
    static LABELS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = LABELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(&known) = set.get(label.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(label.into_boxed_str());
    set.insert(leaked);
    leaked
}

/// What one drain found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TraceDrained {
    /// Records of the four events read since the last drain, before the port filter.
    pub received: u64,
    /// Events the kernel dropped (buffer full) or the queue could not hold.
    pub lost: u64,
    /// Pages or records that did not decode.
    pub undecodable: u64,
}

struct Reader {
    decoder: Decoder,
    cpus: Vec<(File, PathBuf)>,
    page: Vec<u8>,
    queue: Vec<(u64, TraceEvent)>,
    decoded: Vec<(u64, TraceEvent)>,
    drained: TraceDrained,
    /// Kernel drop counters at the last read, per CPU.
    kernel_lost: Vec<u64>,
    instance: PathBuf,
    filtered_ports: Option<Vec<u16>>,
}

/// The running tracepoint source.
pub struct Tracepoints {
    reader: Arc<Mutex<Reader>>,
    ports: Arc<ArcSwap<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    instance: PathBuf,
}

impl Tracepoints {
    /// Creates the instance under `tracefs`, enables the events and starts the reader thread.
    pub fn start(tracefs: &Path) -> Result<Self, TraceError> {
        let instances = tracefs.join("instances");
        match fs::metadata(&instances) {
            Ok(m) if m.is_dir() => {}
            // Mounted but closed to us (tracefs is root's, mode 0700): say so, not "not mounted".
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(TraceError::Io {
                    path: instances,
                    source: std::io::Error::new(
                        e.kind(),
                        format!("{e} (tracefs needs root or CAP_DAC_OVERRIDE)"),
                    ),
                })
            }
            _ => return Err(TraceError::NotMounted(tracefs.to_path_buf())),
        }
        if !tracefs.join("events").is_dir() {
            return Err(TraceError::NotMounted(tracefs.to_path_buf()));
        }
        let header = read_text(&tracefs.join("events/header_page"))?;
        let mut formats = Vec::with_capacity(EVENTS.len());
        for (system, event) in EVENTS {
            formats.push(read_text(
                &tracefs.join(format!("events/{system}/{event}/format")),
            )?);
        }
        let decoder = Decoder::new(
            &header,
            [&formats[0], &formats[1], &formats[2], &formats[3]],
            intern,
        )?;
        remove_stale_instances(&instances);
        // One instance per source: `drainwatch-<pid>`, then `-1`, `-2`... for more in one process.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let name = match n {
            0 => format!("{INSTANCE_PREFIX}{}", std::process::id()),
            n => format!("{INSTANCE_PREFIX}{}-{n}", std::process::id()),
        };
        let instance = instances.join(name);
        if instance.is_dir() {
            remove_instance(&instance);
        }
        fs::create_dir(&instance).map_err(io(&instance))?;
        match setup_instance(&instance, decoder) {
            Ok(reader) => {
                let reader = Arc::new(Mutex::new(reader));
                let ports = Arc::new(ArcSwap::from_pointee(Vec::new()));
                let stop = Arc::new(AtomicBool::new(false));
                let thread = {
                    let (reader, ports, stop) = (reader.clone(), ports.clone(), stop.clone());
                    std::thread::Builder::new()
                        .name("tracepoints".into())
                        .spawn(move || {
                            super::privileges::drop_startup();
                            while !stop.load(Ordering::Relaxed) {
                                std::thread::sleep(READ_EVERY);
                                let mut r = reader.lock().unwrap_or_else(|p| p.into_inner());
                                r.read_all(&ports.load());
                            }
                        })
                        .map_err(io(&instance))?
                };
                Ok(Tracepoints {
                    reader,
                    ports,
                    stop,
                    thread: Some(thread),
                    instance,
                })
            }
            Err(e) => {
                remove_instance(&instance);
                Err(e)
            }
        }
    }

    /// The local ports whose hits are kept from now on.
    pub fn set_ports(&self, ports: &[u16]) {
        if **self.ports.load() != ports {
            self.ports.store(Arc::new(ports.to_vec()));
        }
    }

    /// Reads what the kernel recorded up to now and moves every hit kept since the last drain
    /// into `out`, in the order the kernel recorded them.
    pub fn drain(&self, out: &mut Vec<TraceEvent>) -> TraceDrained {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        r.read_all(&self.ports.load());
        r.queue.sort_by_key(|(ts, _)| *ts);
        out.extend(r.queue.drain(..).map(|(_, e)| e));
        std::mem::take(&mut r.drained)
    }

    pub fn instance(&self) -> &Path {
        &self.instance
    }
}

impl Drop for Tracepoints {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Close the pipes before removing the instance (an open pipe keeps it busy).
        if let Ok(mut r) = self.reader.lock() {
            r.cpus.clear();
        }
        remove_instance(&self.instance);
    }
}

fn setup_instance(instance: &Path, decoder: Decoder) -> Result<Reader, TraceError> {
    write_text(&instance.join("trace_clock"), "mono")?;
    write_text(&instance.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
    write_text(&instance.join("options/overwrite"), "0")?;
    let subbuf_kb: usize = read_text(&instance.join("buffer_subbuf_size_kb"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4);
    for (system, event) in EVENTS {
        write_text(
            &instance.join(format!("events/{system}/{event}/enable")),
            "1",
        )?;
    }
    let per_cpu = instance.join("per_cpu");
    let mut cpus: Vec<(usize, PathBuf)> = fs::read_dir(&per_cpu)
        .map_err(io(&per_cpu))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("cpu")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    cpus.sort();
    let mut files = Vec::with_capacity(cpus.len());
    for (_, dir) in cpus {
        let pipe = dir.join("trace_pipe_raw");
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe)
            .map_err(io(&pipe))?;
        files.push((file, dir.join("stats")));
    }
    let kernel_lost = files
        .iter()
        .map(|(_, stats)| kernel_dropped(stats))
        .collect();
    Ok(Reader {
        decoder,
        cpus: files,
        page: vec![0; subbuf_kb.max(4) * 1024],
        queue: Vec::new(),
        decoded: Vec::new(),
        drained: TraceDrained::default(),
        kernel_lost,
        instance: instance.to_path_buf(),
        filtered_ports: None,
    })
}

/// Events the kernel dropped or overwrote on one CPU (`per_cpu/cpuN/stats`).
fn kernel_dropped(stats: &Path) -> u64 {
    let Ok(text) = read_text(stats) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(key.trim(), "overrun" | "dropped events")
                .then(|| value.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// The kernel-side filter keeping hits whose local port is one of `ports` (none: keep all).
pub fn port_filter(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "0".to_string();
    }
    ports
        .iter()
        .map(|p| format!("sport == {p}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

impl Reader {
    fn apply_filters(&mut self, ports: &[u16]) {
        if self.filtered_ports.as_deref() == Some(ports) {
            return;
        }
        let filter = port_filter(ports);
        for (system, event) in &EVENTS[1..] {
            let path = self
                .instance
                .join(format!("events/{system}/{event}/filter"));
            if fs::write(&path, &filter).is_err() {
                // Too long or refused: keep every hit and filter here.
                let _ = fs::write(&path, "0");
            }
        }
        self.filtered_ports = Some(ports.to_vec());
    }

    fn read_all(&mut self, ports: &[u16]) {
        self.apply_filters(ports);
        for i in 0..self.cpus.len() {
            loop {
                let n = match self.cpus[i].0.read(&mut self.page) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.drained.undecodable += 1;
                        break;
                    }
                };
                self.decoded.clear();
                let info = self.decoder.page(&self.page[..n], &mut self.decoded);
                self.drained.received += info.events;
                self.drained.undecodable += info.undecodable;
                for (ts, event) in self.decoded.drain(..) {
                    if ports.binary_search(&event.local().port()).is_err() {
                        continue;
                    }
                    if self.queue.len() < MAX_QUEUED {
                        self.queue.push((ts, event));
                    } else {
                        self.drained.lost += 1;
                    }
                }
            }
            let dropped = kernel_dropped(&self.cpus[i].1);
            self.drained.lost += dropped.saturating_sub(self.kernel_lost[i]);
            self.kernel_lost[i] = dropped;
        }
    }
}

fn remove_instance(instance: &Path) {
    let _ = fs::write(instance.join("events/enable"), "0");
    let _ = fs::remove_dir(instance);
}

/// Removes instances left by drainwatch processes that no longer exist (killed with SIGKILL).
fn remove_stale_instances(instances: &Path) {
    let Ok(entries) = fs::read_dir(instances) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(INSTANCE_PREFIX))
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Only rmdir, never a write to its `enable`: a drainwatch in another PID namespace
            // looks dead from here, and the kernel refuses to remove an instance whose pipes
            // are open (EBUSY), so a live one is left alone. A dead one's enabled events go
            // with its rmdir.
            let _ = fs::remove_dir(entry.path());
        }
    }
}
