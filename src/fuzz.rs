//! Fuzz targets: what drainwatch does with bytes it did not choose (kernel replies and events,
//! tracefs pages and formats, /proc files, configuration files), as functions of one byte slice.
//!
//! Each target panics only when drainwatch is wrong: a panic in the code under test, or a
//! broken invariant asserted here (an error that names no line, a record claiming more bytes
//! than it was given). `fuzz/` wraps them for libFuzzer (`scripts/fuzz.sh`); every input that
//! ever crashed one is kept in `tests/fixtures/fuzz/<target>/` and replayed by
//! `tests/fuzz_regressions.rs` in the ordinary test run.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::app::publish;
use crate::config::{Config, ConfigError};
use crate::exposition::metrics::{encode_openmetrics, registry};
use crate::exposition::webconfig::WebConfig;
use crate::model::classify::Classifier;
use crate::model::socket::{Listener, Snapshot, SocketRecord, TcpState, Timestamp};
use crate::model::tracker::idle_ms;
use crate::model::Model;
use crate::source::decode::{decode_datagram, decode_tcp_info};
use crate::source::events::keep_watched;
use crate::source::ftrace::{reason_label, Decoder, EventFormat, PageLayout};
use crate::source::procfs::parse_netstat;
use procfs::FromBufRead;

/// A fuzz target: one input, a panic when drainwatch is wrong.
pub type Target = fn(&[u8]);

/// The targets, by the name `scripts/fuzz.sh` and the regression corpus use.
pub const TARGETS: [(&str, Target); 8] = [
    ("dump", dump),
    ("events", events),
    ("tcp_info", tcp_info),
    ("model", model),
    ("ftrace", ftrace),
    ("config", config),
    ("web_config", web_config),
    ("proc", proc),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// A sock_diag dump reply datagram, as the sampler decodes it.
pub fn dump(data: &[u8]) {
    let mut out = Vec::new();
    match decode_datagram(data, &mut out) {
        Ok(_) => check_records(data, &out),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn check_records(data: &[u8], records: &[SocketRecord]) {
    for r in records {
        if let Some(info) = &r.info {
            assert!(
                usize::from(info.len) <= data.len(),
                "tcp_info longer than its datagram"
            );
        }
    }
}

/// A destroy-event datagram, through the event reader's filter and into the tracker as the
/// closes of one sample.
pub fn events(data: &[u8]) {
    let watched = [80u16, 443, 8080];
    let mut batch = Vec::new();
    if decode_datagram(data, &mut batch).is_ok() {
        check_records(data, &batch);
    }
    keep_watched(&mut batch, &watched);
    assert!(batch
        .iter()
        .all(|r| r.local_port == 0 || watched.contains(&r.local_port)));
    let mut model = Model::new(Classifier::from_port_rules([(8080, "websocket")]));
    let first = Snapshot {
        taken_at: Timestamp {
            monotonic_ms: 1_000,
            unix_ms: 1_000,
        },
        watched_ports: watched.to_vec(),
        events_complete: true,
        ..Snapshot::default()
    };
    model.observe(&first);
    let second = Snapshot {
        taken_at: Timestamp {
            monotonic_ms: 2_000,
            unix_ms: 2_000,
        },
        destroyed: batch,
        ..first
    };
    model.observe(&second);
    encode(&model);
}

/// `struct tcp_info` of any length, and what the model derives from it.
pub fn tcp_info(data: &[u8]) {
    let b = data;
    let info = decode_tcp_info(b);
    assert_eq!(usize::from(info.len), b.len().min(usize::from(u16::MAX)));
    let _ = (
        info.bytes_acked(),
        info.bytes_received(),
        info.segs_in(),
        info.segs_out(),
        info.data_segs_in(),
        info.data_segs_out(),
        info.total_rto(),
        info.idle_ms(),
    );
    for age in [0, 1, u64::from(u32::MAX), u64::MAX] {
        idle_ms(&info, age, false);
        idle_ms(&info, age, true);
    }
}

/// Little-endian reader over the fuzzer's bytes; runs out into zeroes and empty slices.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> u8 {
        let (v, rest) = self.0.split_first().map_or((0, &[][..]), |(v, r)| (*v, r));
        self.0 = rest;
        v
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
}

thread_local! {
    /// Built once: the exporter builds its decoder once, leaking its reason labels.
    static FIXTURE_DECODER: Decoder = fixture_decoder();
}

/// The decoder for the tracefs formats in `tests/fixtures/tracefs` (this kernel's).
fn fixture_decoder() -> Decoder {
    Decoder::new(
        include_str!("../tests/fixtures/tracefs/header_page"),
        [
            include_str!("../tests/fixtures/tracefs/tcp_send_reset.format"),
            include_str!("../tests/fixtures/tracefs/tcp_receive_reset.format"),
            include_str!("../tests/fixtures/tracefs/tcp_destroy_sock.format"),
            include_str!("../tests/fixtures/tracefs/inet_sk_error_report.format"),
        ],
        |s| Box::leak(s.into_boxed_str()),
    )
    .expect("the fixture formats decode")
}

/// A sequence of samples made of kernel bytes: per sample a flags byte, a clock step, a dump
/// datagram, an event datagram and tracepoint records, through the whole model and out as
/// metrics.
pub fn model(data: &[u8]) {
    FIXTURE_DECODER.with(|decoder| model_with(decoder, data));
}

fn model_with(decoder: &Decoder, data: &[u8]) {
    let mut bytes = Bytes(data);
    let mut model = Model::new(Classifier::from_port_rules([(8080, "websocket")]));
    let mut snapshot = Snapshot {
        watched_ports: vec![80, 443, 8080],
        local_addrs: vec!["127.0.0.1".parse().expect("an address")],
        ..Snapshot::default()
    };
    let mut samples = 0;
    while !bytes.0.is_empty() && samples < 64 {
        samples += 1;
        let flags = bytes.u8();
        // The sampler's clock is monotonic (the model's contract): it stays or goes forward.
        let step = u64::from(bytes.u16());
        snapshot.taken_at.monotonic_ms = snapshot.taken_at.monotonic_ms.saturating_add(step);
        snapshot.taken_at.unix_ms = snapshot.taken_at.monotonic_ms;
        snapshot.events_complete = flags & 1 != 0;
        snapshot.trace_running = flags & 2 != 0;
        snapshot.trace_complete = flags & 6 == 6;
        snapshot.sole_netns = flags & 8 != 0;
        let mut records = Vec::new();
        let n = usize::from(bytes.u16());
        let _ = decode_datagram(bytes.take(n), &mut records);
        snapshot.listeners.clear();
        snapshot.sockets.clear();
        for r in records {
            if r.state == TcpState::Listen {
                snapshot.listeners.push(Listener {
                    port: r.local_port,
                    queue_length: r.rx_queue,
                    queue_limit: r.tx_queue,
                });
            } else if snapshot.watched_ports.binary_search(&r.local_port).is_ok() {
                snapshot.sockets.push(r);
            }
        }
        snapshot.destroyed.clear();
        let n = usize::from(bytes.u16());
        let _ = decode_datagram(bytes.take(n), &mut snapshot.destroyed);
        snapshot.trace.clear();
        for _ in 0..bytes.u8() % 8 {
            let n = usize::from(bytes.u8());
            if let Ok(Some(event)) = decoder.record(bytes.take(n)) {
                snapshot.trace.push(event);
            }
        }
        model.observe(&snapshot);
    }
    encode(&model);
}

fn encode(model: &Model) {
    let published = publish(model, None, Default::default());
    let registry = registry(Arc::new(ArcSwap::from_pointee(published)));
    let text = encode_openmetrics(&registry).expect("metrics encode");
    assert!(text.ends_with("# EOF\n"));
}

/// tracefs: the first byte chooses a page of ring buffer (decoded with this kernel's formats)
/// or the text of a `format` file, a `header_page`, or a reset reason name.
pub fn ftrace(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let mut out = Vec::new();
            let info = FIXTURE_DECODER.with(|d| d.page(rest, &mut out));
            assert_eq!(info.events as usize, out.len());
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(f) = EventFormat::parse("format", &text) {
                let _ = f.symbols("reason");
            }
            // The fuzzed text as each of the four formats: offsets and sizes come from it.
            let fixture = |i: usize| match i {
                0 => include_str!("../tests/fixtures/tracefs/tcp_send_reset.format"),
                1 => include_str!("../tests/fixtures/tracefs/tcp_receive_reset.format"),
                2 => include_str!("../tests/fixtures/tracefs/tcp_destroy_sock.format"),
                _ => include_str!("../tests/fixtures/tracefs/inet_sk_error_report.format"),
            };
            let slot = usize::from(rest.first().copied().unwrap_or(0) % 4);
            let formats: [&str; 4] =
                std::array::from_fn(|i| if i == slot { &text } else { fixture(i) });
            if let Ok(d) = Decoder::new(
                include_str!("../tests/fixtures/tracefs/header_page"),
                formats,
                intern,
            ) {
                // Records of every event with the fuzzed layout: the bytes again, as data.
                let _ = d.record(rest);
                let mut out = Vec::new();
                d.page(rest, &mut out);
            }
        }
        2 => {
            let text = String::from_utf8_lossy(rest);
            if PageLayout::parse(&text).is_ok() {
                let formats = [
                    include_str!("../tests/fixtures/tracefs/tcp_send_reset.format"),
                    include_str!("../tests/fixtures/tracefs/tcp_receive_reset.format"),
                    include_str!("../tests/fixtures/tracefs/tcp_destroy_sock.format"),
                    include_str!("../tests/fixtures/tracefs/inet_sk_error_report.format"),
                ];
                if let Ok(d) = Decoder::new(&text, formats, intern) {
                    d.page(rest, &mut Vec::new());
                }
            }
        }
        _ => {
            let label = reason_label(&String::from_utf8_lossy(rest));
            assert!(label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
    }
}

/// Stands for the exporter's interning of reason labels, which leaks one string per reason at
/// start: leaking one per fuzzed format would run the fuzzer out of memory. Every label must
/// already be a valid label value.
fn intern(label: String) -> &'static str {
    assert!(
        label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "reason label {label:?}"
    );
    "fuzzed"
}

/// A configuration file, as `check-config` reads it: any error names a line of the file and a
/// key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_text(Path::new("fuzz.toml"), text) {
        Ok(_) | Err(ConfigError::Invalid(_)) => {}
        Err(ConfigError::File { line, key, .. }) => {
            let lines = text.lines().count().max(1);
            assert!((1..=lines + 1).contains(&line), "line {line} of {lines}");
            assert!(!key.is_empty(), "an error at line {line} names no key");
        }
        Err(ConfigError::Read { message, .. }) => assert!(!message.is_empty()),
    }
}

/// A web config file (`--web.config.file`): any error names a line of the file and a key.
/// Certificate paths in it point nowhere readable.
pub fn web_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = WebConfig::parse(Path::new("/nonexistent/drainwatch-fuzz/web.yml"), text) {
        // Lines as editors count them: YAML's other breaks (a lone CR, U+2028) are not.
        let lines = text.split('\n').count();
        assert!(
            (1..=lines + 1).contains(&e.line),
            "line {} of {lines}",
            e.line
        );
        assert!(
            !e.key.is_empty(),
            "an error at line {} names no key",
            e.line
        );
    }
}

/// `/proc/net/snmp` and `/proc/net/netstat`, separated by the first NUL byte.
pub fn proc(data: &[u8]) {
    let (snmp, netstat) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = procfs::net::Snmp::from_buf_read(snmp);
    if let Err(message) = parse_netstat(netstat) {
        assert!(!message.is_empty());
    }
}
