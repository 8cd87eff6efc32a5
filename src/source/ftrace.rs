//! Pure decoding of ftrace's binary ring buffer (`per_cpu/cpuN/trace_pipe_raw`) into
//! [`TraceEvent`]s, with every layout read from tracefs at run time: the page header
//! (`events/header_page`), and each event's id, field offsets and reset reason names
//! (`events/<system>/<event>/format`). Kernels change these layouts (`tcp_send_reset` took
//! `sockaddr_in6` addresses and a reason in 6.10), so nothing here assumes an offset.
//!
//! A page is `timestamp: u64, commit: local_t, data`: `commit` holds the data length and two
//! flags (events were lost before this page; their count is stored after the data). Each event
//! starts with a 32-bit header, `type_len: 5 bits, time_delta: 27 bits`: type_len 1..=28 is a
//! data record of `type_len * 4` bytes, 0 a data record whose length (plus 4) follows, 29
//! padding (the rest of the page when its delta is 0), 30 a time extension, 31 an absolute
//! timestamp (include/linux/ring_buffer.h).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::socket::{TcpState, TraceEvent};

/// The tracepoints drainwatch reads, as (system, event).
pub const EVENTS: [(&str, &str); 4] = [
    ("tcp", "tcp_send_reset"),
    ("tcp", "tcp_receive_reset"),
    ("tcp", "tcp_destroy_sock"),
    ("sock", "inet_sk_error_report"),
];

const ETIMEDOUT: i64 = 110;
const IPPROTO_TCP: u64 = 6;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
/// Commit flags: events were lost before this page; their count is stored after the data.
const RB_MISSED_EVENTS: u64 = 1 << 31;
const RB_MISSED_STORED: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{file}: no {what}")]
    Missing { file: String, what: String },
    #[error("{file}: field {field} is {size} bytes, expected {expected}")]
    Size {
        file: String,
        field: String,
        size: usize,
        expected: String,
    },
}

/// One field of an event record: byte offset and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: usize,
    pub size: usize,
}

impl Field {
    fn bytes<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        data.get(self.offset..self.offset.checked_add(self.size)?)
    }
    fn uint(&self, data: &[u8]) -> Option<u64> {
        let b = self.bytes(data)?;
        Some(match self.size {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_ne_bytes([b[0], b[1]])),
            4 => u64::from(u32::from_ne_bytes(b.try_into().ok()?)),
            8 => u64::from_ne_bytes(b.try_into().ok()?),
            _ => return None,
        })
    }
    fn int(&self, data: &[u8]) -> Option<i64> {
        let v = self.uint(data)?;
        Some(match self.size {
            1 => i64::from(v as u8 as i8),
            2 => i64::from(v as u16 as i16),
            4 => i64::from(v as u32 as i32),
            _ => v as i64,
        })
    }
}

/// An event's `format` file: id, fields, and print format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub id: u16,
    pub fields: HashMap<String, Field>,
    pub print_fmt: String,
}

impl EventFormat {
    /// Parses the text of `events/<system>/<event>/format`.
    pub fn parse(file: &str, text: &str) -> Result<Self, FormatError> {
        let missing = |what: &str| FormatError::Missing {
            file: file.to_string(),
            what: what.to_string(),
        };
        let mut name = None;
        let mut id = None;
        let mut fields = HashMap::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("name:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("ID:") {
                id = v.trim().parse::<u16>().ok();
            } else if let Some(v) = line.strip_prefix("print fmt:") {
                print_fmt = v.trim().to_string();
            } else if line.starts_with("field:") {
                if let Some((fname, field)) = parse_field_line(line) {
                    fields.insert(fname, field);
                }
            }
        }
        Ok(EventFormat {
            name: name.ok_or_else(|| missing("name"))?,
            id: id.ok_or_else(|| missing("ID"))?,
            fields,
            print_fmt,
        })
    }

    fn field(&self, name: &str) -> Option<Field> {
        self.fields.get(name).copied()
    }

    fn need(&self, file: &str, name: &str) -> Result<Field, FormatError> {
        self.field(name).ok_or_else(|| FormatError::Missing {
            file: file.to_string(),
            what: format!("field {name}"),
        })
    }

    /// The `{ value, "NAME" }` pairs of the `__print_symbolic` that prints `REC-><field>`.
    pub fn symbols(&self, field: &str) -> Vec<(u64, String)> {
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else {
            return Vec::new();
        };
        let rest = &self.print_fmt[start + needle.len()..];
        let end = rest.find("})").map(|e| e + 1).unwrap_or(rest.len());
        rest[..end]
            .split('{')
            .filter_map(|pair| {
                let pair = pair
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_end_matches('}');
                let (value, name) = pair.split_once(',')?;
                let value = value.trim();
                let value = value
                    .strip_prefix("0x")
                    .map(|h| u64::from_str_radix(h, 16).ok())
                    .unwrap_or_else(|| value.parse().ok())?;
                Some((value, name.trim().trim_matches('"').to_string()))
            })
            .collect()
    }
}

/// The largest field offset or size a format may give (a ring-buffer page is at most 64 KiB).
const MAX_FIELD_END: usize = 1 << 16;

/// `field:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;` -> ("skaddr", 16, 8).
fn parse_field_line(line: &str) -> Option<(String, Field)> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("field:") {
            decl = Some(v.trim());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        }
    }
    let (offset, size): (usize, usize) = (offset?, size?);
    // A record lives in one ring-buffer page: a field past 64 KiB is not a kernel's format.
    if offset > MAX_FIELD_END || size > MAX_FIELD_END {
        return None;
    }
    let decl = decl?;
    let last = decl.rsplit([' ', '*']).next()?;
    let name = last.split('[').next()?.to_string();
    Some((name, Field { offset, size }))
}

/// Where a page's commit word and data start (`events/header_page`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLayout {
    pub commit: Field,
    pub data_offset: usize,
}

impl PageLayout {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut commit = None;
        let mut data = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some((name, field)) = parse_field_line(line) {
                match name.as_str() {
                    "commit" => commit = Some(field),
                    "data" => data = Some(field.offset),
                    _ => {}
                }
            }
        }
        let missing = |what: &str| FormatError::Missing {
            file: "events/header_page".into(),
            what: what.into(),
        };
        Ok(PageLayout {
            commit: commit.ok_or_else(|| missing("field commit"))?,
            data_offset: data.ok_or_else(|| missing("field data"))?,
        })
    }
}

/// Where a socket's addresses are in a record: either two `sockaddr_in`/`sockaddr_in6`
/// (tcp_send_reset since 6.10) or separate family, ports and v4/v6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addresses {
    Sockaddr {
        local: Field,
        remote: Field,
    },
    Split {
        family: Field,
        sport: Field,
        dport: Field,
        saddr: Field,
        daddr: Field,
        saddr_v6: Field,
        daddr_v6: Field,
    },
}

impl Addresses {
    fn from_format(f: &EventFormat, file: &str) -> Result<Self, FormatError> {
        match (f.field("saddr"), f.field("daddr")) {
            (Some(s), Some(d)) if s.size >= 28 && d.size >= 28 => Ok(Addresses::Sockaddr {
                local: s,
                remote: d,
            }),
            _ => {
                let split = Addresses::Split {
                    family: f.need(file, "family")?,
                    sport: f.need(file, "sport")?,
                    dport: f.need(file, "dport")?,
                    saddr: f.need(file, "saddr")?,
                    daddr: f.need(file, "daddr")?,
                    saddr_v6: f.need(file, "saddr_v6")?,
                    daddr_v6: f.need(file, "daddr_v6")?,
                };
                if let Addresses::Split {
                    saddr, saddr_v6, ..
                } = split
                {
                    if saddr.size != 4 || saddr_v6.size != 16 {
                        return Err(FormatError::Size {
                            file: file.into(),
                            field: "saddr/saddr_v6".into(),
                            size: saddr.size,
                            expected: "4 and 16".into(),
                        });
                    }
                }
                Ok(split)
            }
        }
    }

    fn read(&self, data: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
        match *self {
            Addresses::Sockaddr { local, remote } => Some((
                sockaddr(local.bytes(data)?)?,
                sockaddr(remote.bytes(data)?)?,
            )),
            Addresses::Split {
                family,
                sport,
                dport,
                saddr,
                daddr,
                saddr_v6,
                daddr_v6,
            } => {
                let (sp, dp) = (sport.uint(data)? as u16, dport.uint(data)? as u16);
                let (s, d) = match family.uint(data)? {
                    AF_INET6 => (
                        IpAddr::V6(Ipv6Addr::from(
                            <[u8; 16]>::try_from(saddr_v6.bytes(data)?).ok()?,
                        )),
                        IpAddr::V6(Ipv6Addr::from(
                            <[u8; 16]>::try_from(daddr_v6.bytes(data)?).ok()?,
                        )),
                    ),
                    _ => (
                        IpAddr::V4(Ipv4Addr::from(
                            <[u8; 4]>::try_from(saddr.bytes(data)?).ok()?,
                        )),
                        IpAddr::V4(Ipv4Addr::from(
                            <[u8; 4]>::try_from(daddr.bytes(data)?).ok()?,
                        )),
                    ),
                };
                Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp)))
            }
        }
    }
}

/// A `struct sockaddr_in` or `sockaddr_in6` as the kernel stores it (family in host order,
/// port in network order). A zeroed one (no socket) reads as 0.0.0.0:0.
fn sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match u64::from(family) {
        AF_INET6 => {
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        AF_INET => {
            let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        _ => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
    }
}

#[derive(Debug, Clone)]
struct SendReset {
    id: u16,
    skaddr: Option<Field>,
    state: Option<Field>,
    reason: Option<Field>,
    addrs: Addresses,
}

#[derive(Debug, Clone)]
struct CookieEvent {
    id: u16,
    skaddr: Field,
    cookie: Field,
    addrs: Addresses,
}

#[derive(Debug, Clone)]
struct ErrorReport {
    id: u16,
    error: Field,
    protocol: Option<Field>,
    addrs: Addresses,
}

/// Reset reason label for the kernel's `sk_rst_reason` name: `TCP_ABORT_ON_CLOSE` ->
/// `abort-on-close`, `NO_SOCKET` -> `no-socket`. Whatever a format file holds, the label is
/// made of `a-z`, `0-9` and `-` only.
pub fn reason_label(kernel_name: &str) -> String {
    let name = kernel_name.strip_prefix("TCP_").unwrap_or(kernel_name);
    name.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect()
}

/// A record shorter than its format says (or with an address family the decoder does not know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tracepoint record cut short")]
pub struct ShortRecord;

/// What one page held besides its events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// Records of the events drainwatch reads.
    pub events: u64,
    /// The kernel lost events before this page (count known when `lost` > 0).
    pub missed: bool,
    pub lost: u64,
    /// Records that did not decode (cut short, unknown family).
    pub undecodable: u64,
}

/// Decodes pages of the four [`EVENTS`] with layouts read from tracefs.
#[derive(Debug, Clone)]
pub struct Decoder {
    page: PageLayout,
    send: SendReset,
    receive: CookieEvent,
    destroy: CookieEvent,
    error: ErrorReport,
    /// Reset reason labels by kernel value.
    reasons: HashMap<u64, &'static str>,
}

impl Decoder {
    /// `formats` are the `format` files of [`EVENTS`], in that order; `intern` turns a reason
    /// label into a `'static` one (called once per reason, at start).
    pub fn new(
        header_page: &str,
        formats: [&str; 4],
        mut intern: impl FnMut(String) -> &'static str,
    ) -> Result<Self, FormatError> {
        let file = |i: usize| format!("events/{}/{}/format", EVENTS[i].0, EVENTS[i].1);
        let f: Vec<EventFormat> = formats
            .iter()
            .enumerate()
            .map(|(i, text)| EventFormat::parse(&file(i), text))
            .collect::<Result<_, _>>()?;
        let cookie_event = |i: usize| -> Result<CookieEvent, FormatError> {
            Ok(CookieEvent {
                id: f[i].id,
                skaddr: f[i].need(&file(i), "skaddr")?,
                cookie: f[i].need(&file(i), "sock_cookie")?,
                addrs: Addresses::from_format(&f[i], &file(i))?,
            })
        };
        let reasons = f[0]
            .symbols("reason")
            .into_iter()
            .map(|(v, name)| (v, intern(reason_label(&name))))
            .collect();
        Ok(Decoder {
            page: PageLayout::parse(header_page)?,
            send: SendReset {
                id: f[0].id,
                skaddr: f[0].field("skaddr"),
                state: f[0].field("state"),
                reason: f[0].field("reason"),
                addrs: Addresses::from_format(&f[0], &file(0))?,
            },
            receive: cookie_event(1)?,
            destroy: cookie_event(2)?,
            error: ErrorReport {
                id: f[3].id,
                error: f[3].need(&file(3), "error")?,
                protocol: f[3].field("protocol"),
                addrs: Addresses::from_format(&f[3], &file(3))?,
            },
            reasons,
        })
    }

    /// Decodes one event record (starting at `common_type`); `None` for records of other
    /// events, error reports other than TCP timeouts, and records cut short.
    pub fn record(&self, data: &[u8]) -> Result<Option<TraceEvent>, ShortRecord> {
        let id = u16::from_ne_bytes([
            *data.first().ok_or(ShortRecord)?,
            *data.get(1).ok_or(ShortRecord)?,
        ]);
        if id == self.send.id {
            let s = &self.send;
            let (local, remote) = s.addrs.read(data).ok_or(ShortRecord)?;
            let reason = match s.reason {
                Some(f) => {
                    let v = f.uint(data).ok_or(ShortRecord)?;
                    self.reasons.get(&v).copied().unwrap_or("unknown")
                }
                None => "unknown",
            };
            let skaddr = match s.skaddr {
                Some(f) => f.uint(data).ok_or(ShortRecord)?,
                None => 0,
            };
            let state = match s.state {
                Some(f) => TcpState::from_kernel(f.uint(data).ok_or(ShortRecord)? as u8),
                None => None,
            };
            Ok(Some(TraceEvent::ResetSent {
                skaddr,
                state: if skaddr == 0 { None } else { state },
                reason,
                local,
                remote,
            }))
        } else if id == self.receive.id || id == self.destroy.id {
            let e = if id == self.receive.id {
                &self.receive
            } else {
                &self.destroy
            };
            let (local, remote) = e.addrs.read(data).ok_or(ShortRecord)?;
            let skaddr = e.skaddr.uint(data).ok_or(ShortRecord)?;
            let cookie = e.cookie.uint(data).ok_or(ShortRecord)?;
            Ok(Some(if id == self.receive.id {
                TraceEvent::ResetReceived {
                    skaddr,
                    cookie,
                    local,
                    remote,
                }
            } else {
                TraceEvent::Destroyed {
                    skaddr,
                    cookie,
                    local,
                    remote,
                }
            }))
        } else if id == self.error.id {
            let e = &self.error;
            let error = e.error.int(data).ok_or(ShortRecord)?;
            let tcp = match e.protocol {
                Some(f) => f.uint(data).ok_or(ShortRecord)? == IPPROTO_TCP,
                None => true,
            };
            if !tcp || error.abs() != ETIMEDOUT {
                return Ok(None);
            }
            let (local, remote) = e.addrs.read(data).ok_or(ShortRecord)?;
            Ok(Some(TraceEvent::TimedOut { local, remote }))
        } else {
            Ok(None)
        }
    }

    /// Decodes one ring-buffer page (as read from `trace_pipe_raw`) into `out`, each event with
    /// its timestamp (ns, the instance's trace clock).
    pub fn page(&self, page: &[u8], out: &mut Vec<(u64, TraceEvent)>) -> PageInfo {
        let mut info = PageInfo::default();
        let c = self.page.commit;
        let (Some(mut ts), Some(commit)) = (
            page.get(0..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes),
            c.uint(page),
        ) else {
            info.undecodable += 1;
            return info;
        };
        let length = (commit & (RB_MISSED_STORED - 1)) as usize;
        let start = self.page.data_offset;
        let end = (start + length).min(page.len());
        if commit & RB_MISSED_EVENTS != 0 {
            info.missed = true;
            if commit & RB_MISSED_STORED != 0 {
                info.lost = page
                    .get(end..end + c.size)
                    .and_then(|b| match c.size {
                        8 => b.try_into().ok().map(u64::from_ne_bytes),
                        4 => b.try_into().ok().map(|b| u64::from(u32::from_ne_bytes(b))),
                        _ => None,
                    })
                    .unwrap_or(0);
            }
        }
        let word = |at: usize| -> Option<u32> {
            page.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
        };
        let mut off = start;
        while off + 4 <= end {
            let Some(header) = word(off) else { break };
            let type_len = header & 0x1f;
            let delta = u64::from(header >> 5);
            off += 4;
            let (data_at, len) = match type_len {
                29 => {
                    // Padding: the rest of the page when its delta is 0, else a discarded event.
                    if delta == 0 {
                        break;
                    }
                    let Some(n) = word(off) else { break };
                    off += n as usize;
                    continue;
                }
                30 => {
                    let Some(ext) = word(off) else { break };
                    ts = ts.wrapping_add((u64::from(ext) << 27) | delta);
                    off += 4;
                    continue;
                }
                31 => {
                    let Some(abs) = word(off) else { break };
                    let stamp = (u64::from(abs) << 27) | delta;
                    // The absolute stamp carries the low 59 bits.
                    ts = (ts & !((1u64 << 59) - 1)) | stamp;
                    off += 4;
                    continue;
                }
                0 => {
                    let Some(n) = word(off) else { break };
                    let Some(n) = (n as usize).checked_sub(4) else {
                        info.undecodable += 1;
                        break;
                    };
                    (off + 4, n)
                }
                n => (off, n as usize * 4),
            };
            // Stamps are the kernel's, not ours: a page may wrap them.
            ts = ts.wrapping_add(delta);
            let Some(data) = page.get(data_at..data_at + len) else {
                info.undecodable += 1;
                break;
            };
            off = data_at + len;
            match self.record(data) {
                Ok(Some(event)) => {
                    info.events += 1;
                    out.push((ts, event));
                }
                Ok(None) => {}
                Err(ShortRecord) => info.undecodable += 1,
            }
        }
        info
    }
}
