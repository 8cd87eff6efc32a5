//! Writes the fuzz targets' seed inputs into `DIR/<target>/` (run by `scripts/fuzz.sh`):
//! bytes this kernel sends (a sock_diag dump of loopback connections, their destroy events when
//! run as root) and the repository's fixtures (tracefs formats, /proc files, configuration
//! examples).
//!
//!     cargo run --example fuzz_seeds -- target/fuzz/seeds

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drainwatch::source::decode::{NLMSG_DONE, NLMSG_HDRLEN};
use drainwatch::source::events::DESTROY_GROUPS;
use drainwatch::source::ftrace::EventFormat;
use drainwatch::source::request::{build_request, DumpSpec, Family};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = Seeds { dir, count: 0 };

    // Live kernel bytes: three loopback connections with some data in flight, dumped; then
    // closed (one by RST) and their destroy events read.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(listener.local_addr()?)?;
        let (s, _) = listener.accept()?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: seed\r\n\r\n")?;
        pairs.push((c, s));
    }
    let events = subscribe().ok();
    let dump = dump_datagrams(port)?;
    for (i, d) in dump.iter().enumerate() {
        seeds.write("dump", &format!("live-{i}"), d);
        seeds.write("events", &format!("dump-{i}"), d);
        for (j, info) in tcp_infos(d).iter().enumerate() {
            seeds.write("tcp_info", &format!("live-{i}-{j}"), info);
        }
    }
    let (c, _) = &pairs[0];
    socket_linger_zero(c)?;
    drop(pairs);
    let destroyed = match &events {
        Some(socket) => read_events(socket),
        None => {
            eprintln!("fuzz_seeds: no destroy events (not root?): events seeded from the dump");
            Vec::new()
        }
    };
    for (i, d) in destroyed.iter().enumerate() {
        seeds.write("events", &format!("live-{i}"), d);
    }
    // model: two samples framed as drainwatch::fuzz::model reads them.
    let mut framed = Vec::new();
    for (flags, records, closed) in [
        (0x0f_u8, dump.first(), None),
        (0x0f, None, destroyed.first()),
    ] {
        framed.push(flags);
        framed.extend_from_slice(&1000u16.to_le_bytes());
        for part in [records, closed] {
            let part = part.map(Vec::as_slice).unwrap_or(&[]);
            let part = &part[..part.len().min(usize::from(u16::MAX))];
            framed.extend_from_slice(&(part.len() as u16).to_le_bytes());
            framed.extend_from_slice(part);
        }
        framed.push(0);
    }
    seeds.write("model", "live", &framed);
    for len in [0, 104, 160, 200, 232, 248] {
        seeds.write("tcp_info", &format!("zero-{len}"), &vec![0u8; len]);
    }

    // tracefs: each format file (selector 1), the page header (2), reason names (3), and one
    // page holding a tcp_receive_reset record of the fixture layout (0).
    let tracefs = repo.join("tests/fixtures/tracefs");
    for entry in std::fs::read_dir(&tracefs)? {
        let path = entry?.path();
        let text = std::fs::read(&path)?;
        let selector = if path.ends_with("header_page") { 2 } else { 1 };
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        seeds.write("ftrace", &name, &[&[selector][..], &text].concat());
    }
    for reason in ["NOT_SPECIFIED", "TCP_ABORT_ON_CLOSE", "TCP_RFC7323_PAWS"] {
        seeds.write("ftrace", reason, &[&[3][..], reason.as_bytes()].concat());
    }
    let format = std::fs::read_to_string(tracefs.join("tcp_receive_reset.format"))?;
    let format = EventFormat::parse("tcp_receive_reset", &format)?;
    let size = format
        .fields
        .values()
        .map(|f| f.offset + f.size)
        .max()
        .unwrap_or(8)
        .next_multiple_of(4);
    let mut record = vec![0u8; size];
    record[..2].copy_from_slice(&format.id.to_ne_bytes());
    let mut page = Vec::new();
    page.extend_from_slice(&1_000_000u64.to_ne_bytes()); // time stamp
    page.extend_from_slice(&((4 + size) as u64).to_ne_bytes()); // commit: bytes of data
    page.extend_from_slice(&(((size / 4) as u32) & 0x1f | (10 << 5)).to_ne_bytes());
    page.extend_from_slice(&record);
    seeds.write("ftrace", "page", &[&[0][..], &page].concat());

    // Text inputs.
    let proc = repo.join("tests/fixtures/proc/net");
    let snmp = std::fs::read(proc.join("snmp"))?;
    let netstat = std::fs::read(proc.join("netstat"))?;
    seeds.write("proc", "fixture", &[&snmp[..], &[0], &netstat].concat());
    seeds.write(
        "config",
        "debian",
        &std::fs::read(repo.join("deploy/debian/drainwatch.toml"))?,
    );
    seeds.write(
        "config",
        "classes",
        b"[watch]\nports = [80, 8080]\n\n[[class]]\nport = 8080\nclass = \"websocket\"\n\n[[class]]\nport = 80\npeer = \"10.0.0.0/8\"\nclass = \"probe\"\n\n[drain]\nmax_active = 3\nquiet = \"30s\"\n",
    );
    seeds.write(
        "web_config",
        "example",
        &std::fs::read(repo.join("deploy/web-config.example.yml"))?,
    );
    seeds.write(
        "web_config",
        "tls",
        b"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    );
    eprintln!(
        "fuzz_seeds: {} seeds in {}",
        seeds.count,
        seeds.dir.display()
    );
    Ok(())
}

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    fn write(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(dir.join(name), bytes).expect("seed file");
        self.count += 1;
    }
}

/// The raw reply datagrams of a dump of `port` (both families, listeners and connections).
fn dump_datagrams(port: u16) -> std::io::Result<Vec<Vec<u8>>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let spec = DumpSpec {
        family: Family::V4,
        listeners: true,
        connections: true,
        local_ports: Some(vec![port]),
    };
    socket.send(&build_request(&spec, 1), 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        out.push(buf[..n].to_vec());
        if n < NLMSG_HDRLEN || u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_DONE {
            return Ok(out);
        }
        // The last message of a datagram may be NLMSG_DONE.
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            if u16::from_ne_bytes([buf[at + 4], buf[at + 5]]) == NLMSG_DONE {
                return Ok(out);
            }
            if len < NLMSG_HDRLEN {
                return Ok(out);
            }
            at += (len + 3) & !3;
        }
    }
}

/// The `INET_DIAG_INFO` payloads of a dump datagram's messages.
fn tcp_infos(datagram: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let len = u32::from_ne_bytes(datagram[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            break;
        }
        let msg = &datagram[at + NLMSG_HDRLEN..at + len];
        let mut a = 72; // sizeof(struct inet_diag_msg)
        while a + 4 <= msg.len() {
            let alen = usize::from(u16::from_ne_bytes([msg[a], msg[a + 1]]));
            let atype = u16::from_ne_bytes([msg[a + 2], msg[a + 3]]);
            if alen < 4 || a + alen > msg.len() {
                break;
            }
            if atype == 2 {
                out.push(msg[a + 4..a + alen].to_vec());
            }
            a += (alen + 3) & !3;
        }
        at += (len + 3) & !3;
    }
    out
}

fn subscribe() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    for group in DESTROY_GROUPS {
        socket.add_membership(group)?;
    }
    socket.set_non_blocking(true)?;
    Ok(socket)
}

/// Destroy-event datagrams arriving within a second.
fn read_events(socket: &Socket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) if n > 0 => out.push(buf[..n].to_vec()),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    out
}

/// SO_LINGER 0: closing the stream sends an RST, and its socket is destroyed at once.
#[allow(unsafe_code)]
fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid linger struct that outlives the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
