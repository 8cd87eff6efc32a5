#!/usr/bin/env python3
"""Hold N established loopback TCP connections to one port (Python 3 stdlib only).

Used by benches/perf.sh and usable by hand or from other tests:

    benches/loadgen.py hold --port 24000 --connections 40000 --ready-file /tmp/lg.ready

Layout
  * S server processes, each with its own SO_REUSEPORT listener on LISTEN:PORT, accept and
    hold the connections (the kernel spreads new connections over the listeners).
  * C client processes, each opening its share of the connections.  With a wildcard listener
    (default 0.0.0.0) the destinations are spread over 127.0.0.1..127.0.0.K so that no
    (source, destination, port) tuple needs more than ~10,000 ephemeral ports; with a
    127.0.0.1 listener the *sources* are spread over 127.0.0.1..K instead (bind with
    IP_BIND_ADDRESS_NO_PORT).  Every process stays well under 15,000 file descriptors.
  * Each connection does a one-byte exchange (client "x", server "k") so that a connection is
    counted only once the server has accepted it; clients keep at most --window unanswered
    connections in flight, so no accept queue ever overflows.
  * When all are up the parent checks that the clients hold exactly N and the servers hold
    exactly N, writes --ready-file (JSON), and holds until SIGTERM/SIGINT or --max-seconds.
  * Closing some connections while holding: SIGUSR1 (or --close-after SECONDS) closes
    --close-count of them (oldest first) from --close-side (client: the peer closes, as
    clients leaving; server: the server closes, as a draining backend) with --close-mode
    fin (orderly) or rst (abortive), then writes --closed-file.
  * On exit the clients close first (--final-close, default rst: no TIME_WAIT is left on
    either side), then the servers; the ready file is removed.  Children get
    PR_SET_PDEATHSIG and also exit when their stdin (a pipe from the parent) reaches EOF, so
    no process outlives the parent even if it is killed with SIGKILL.

Traffic stays on loopback; the run is bounded by --connections (max 200,000) and
--max-seconds.  Exit status: 0 after a requested or timed stop, 1 on any setup or runtime
error, 2 on bad arguments.
"""

import argparse
import ctypes
import errno
import json
import math
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
IP_BIND_ADDRESS_NO_PORT = 24
MAX_CONNECTIONS = 200_000
PER_SERVER = 8_000      # average connections per server process
PER_CLIENT = 10_000     # connections per client process
PER_TUPLE = 10_000      # connections per (source, destination) address pair
FD_BUDGET = 15_000      # refuse layouts that would put a process above this


def log(msg):
    sys.stderr.write("loadgen[%d] %s %s\n" % (os.getpid(), time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def say(line):
    """Child -> parent status line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_preexec():
    """Runs in the child between fork and exec: die with the parent, ignore terminal ^C."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # the stdin-EOF watch still covers this case
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def linger_zero(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# children


class Holder:
    """Event loop shared by server and client children: holds sockets, reacts to peer close,
    and obeys line commands from the parent on stdin."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.conns = {}           # fd -> socket, insertion order = age order
        self.peer_closed = 0
        self.stdin_buf = b""
        self.stdin_fd = sys.stdin.fileno()
        os.set_blocking(self.stdin_fd, False)
        self.sel.register(self.stdin_fd, selectors.EVENT_READ, "stdin")
        self.exiting = False
        self.final_mode = "rst"

    def add(self, sock):
        sock.setblocking(False)
        self.conns[sock.fileno()] = sock
        self.sel.register(sock, selectors.EVENT_READ, "conn")

    def drop(self, sock, mode="fin"):
        fd = sock.fileno()
        if fd in self.conns:
            del self.conns[fd]
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        if mode == "rst":
            linger_zero(sock)
        try:
            sock.close()
        except OSError:
            pass

    def close_some(self, n, mode):
        victims = list(self.conns.values())[:n]
        for s in victims:
            self.drop(s, mode)
        return len(victims)

    def close_all(self, mode):
        return self.close_some(len(self.conns), mode)

    def on_conn_readable(self, sock):
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.peer_closed += 1
            self.drop(sock, "fin")
            return
        self.on_data(sock, data)

    def on_data(self, sock, data):
        pass

    def on_stdin(self):
        try:
            chunk = os.read(self.stdin_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:                      # parent is gone
            self.exiting = True
            return
        self.stdin_buf += chunk
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            self.command(line.decode().split())

    def command(self, words):
        if not words:
            return
        if words[0] == "count":
            say("count %d %d" % (len(self.conns), self.peer_closed))
        elif words[0] == "close":
            n = self.close_some(int(words[1]), words[2])
            say("closed %d" % n)
        elif words[0] == "exit":
            self.final_mode = words[1] if len(words) > 1 else "rst"
            self.exiting = True
        else:
            say("error unknown command %r" % words[0])

    def poll(self, timeout):
        for key, _ in self.sel.select(timeout):
            if key.data == "stdin":
                self.on_stdin()
            elif key.data == "conn":
                if key.fileobj.fileno() in self.conns:
                    self.on_conn_readable(key.fileobj)
            else:
                self.on_other(key)

    def on_other(self, key):
        pass

    def run_until_exit(self):
        while not self.exiting:
            self.poll(1.0)
        self.shutdown()

    def shutdown(self):
        n = self.close_all(self.final_mode)
        say("bye %d" % n)


class Server(Holder):
    def __init__(self, args):
        super().__init__()
        fam = socket.AF_INET6 if ":" in args.listen else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            self.lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.lsock.bind((args.listen, args.port))
        self.lsock.listen(args.backlog)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, "listen")
        self.fd_limit = raise_nofile()
        self.accepted = 0

    def on_other(self, key):
        for _ in range(512):
            try:
                sock, _addr = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    say("error accept: %s (holding %d)" % (e, len(self.conns)))
                    self.exiting = True
                    return
                raise
            self.accepted += 1
            self.add(sock)

    def on_data(self, sock, data):
        try:
            sock.send(b"k" * min(len(data), 64))
        except OSError:
            self.peer_closed += 1
            self.drop(sock, "fin")

    def shutdown(self):
        # Stop accepting first; connections still queued are reset by the kernel.
        try:
            self.sel.unregister(self.lsock)
        except (KeyError, ValueError):
            pass
        self.lsock.close()
        super().shutdown()


class Client(Holder):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.fd_limit = raise_nofile()

    def open_all(self):
        a = self.args
        pairs = [tuple(p.split("|")) for p in a.pairs.split(",")]
        fam = socket.AF_INET6 if ":" in pairs[0][1] else socket.AF_INET
        pending = []
        deadline = time.monotonic() + a.setup_timeout
        for i in range(a.count):
            src, dst = pairs[(a.offset + i) % len(pairs)]
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                if src:
                    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    s.bind((src, 0))
                s.settimeout(max(1.0, deadline - time.monotonic()))
                s.connect((dst, a.port))
                s.sendall(b"x")
            except OSError as e:
                s.close()
                say("error connect #%d %s->%s:%d: %s" % (i, src or "-", dst, a.port, e))
                return False
            pending.append(s)
            if len(pending) >= a.window or i == a.count - 1:
                if not self.collect(pending, deadline):
                    return False
                pending = []
            # keep the parent's link alive: notice an early exit request or parent death
            if i % 1000 == 999:
                self.poll(0)
                if self.exiting:
                    return False
        return True

    def collect(self, pending, deadline):
        for s in pending:
            try:
                s.settimeout(max(0.5, deadline - time.monotonic()))
                got = s.recv(1)
            except OSError as e:
                got = None
                err = e
            if got != b"k":
                say("error no answer from server on %s: %s" % (
                    s.getsockname(), err if got is None else "eof"))
                s.close()
                return False
            self.add(s)
        return True


def child_main(kind, argv):
    p = argparse.ArgumentParser(prog="loadgen.py " + kind)
    p.add_argument("--port", type=int, required=True)
    if kind == "_server":
        p.add_argument("--listen", required=True)
        p.add_argument("--backlog", type=int, default=4096)
    else:
        p.add_argument("--pairs", required=True, help="src|dst,src|dst,...")
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--offset", type=int, default=0)
        p.add_argument("--window", type=int, default=200)
        p.add_argument("--setup-timeout", type=float, default=120)
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    holder = []

    def on_term(*_):
        # SIGTERM comes from PR_SET_PDEATHSIG (parent died) or a user: abort every connection
        # (RST) so that neither side is left in TIME_WAIT, then exit at once.
        for h in holder:
            try:
                h.close_all("rst")
            except Exception:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        if kind == "_server":
            h = Server(a)
            holder.append(h)
            say("listening")
        else:
            h = Client(a)
            holder.append(h)
            if not h.open_all():
                h.close_all("rst")
                say("bye 0")
                return 1
            say("ready %d" % len(h.conns))
        h.run_until_exit()
    except Exception as e:  # report, never hang the parent
        say("error %s: %s" % (type(e).__name__, e))
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# parent


class Child:
    def __init__(self, name, argv):
        self.name = name
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=child_preexec,
            close_fds=True)
        self.buf = b""
        self.lines = []
        self.eof = False
        os.set_blocking(self.proc.stdout.fileno(), False)

    def send(self, line):
        try:
            self.proc.stdin.write((line + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def read(self):
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            self.eof = True
            return
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.lines.append(line.decode(errors="replace"))


class LoadGen:
    def __init__(self, args):
        self.a = args
        self.children = []
        self.servers = []
        self.clients = []
        self.signals = []
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.held = 0

    # -- plumbing --
    def spawn(self, name, kind, extra):
        argv = [sys.executable, os.path.abspath(__file__), kind] + extra
        c = Child(name, argv)
        self.children.append(c)
        self.sel.register(c.proc.stdout, selectors.EVENT_READ, c)
        return c

    def on_signal(self, signum, _frame):
        self.signals.append(signum)

    def pump(self, timeout):
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                try:
                    self.wake_r.recv(4096)
                except OSError:
                    pass
            else:
                key.data.read()
                if key.data.eof:
                    self.sel.unregister(key.fileobj)

    def expect(self, children, prefix, timeout, what, interruptible=True):
        """Wait for one line starting with `prefix` from each child; returns {child: line}."""
        deadline = time.monotonic() + timeout
        got = {}
        while len(got) < len(children):
            for c in children:
                if c in got:
                    continue
                while c.lines:
                    line = c.lines.pop(0)
                    if line.startswith(prefix):
                        got[c] = line
                        break
                    if line.startswith("error"):
                        raise RuntimeError("%s: %s" % (c.name, line))
                    log("%s: %s" % (c.name, line))
                if c not in got and c.eof and not c.lines:
                    raise RuntimeError("%s exited (status %s) while %s" % (
                        c.name, c.proc.poll(), what))
            if len(got) == len(children):
                break
            if interruptible and self.stop_requested():
                raise KeyboardInterrupt
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("timed out after %.0fs while %s" % (timeout, what))
            self.pump(min(left, 1.0))
        return got

    def stop_requested(self):
        return any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for s in self.signals)

    def counts(self, children):
        for c in children:
            c.send("count")
        got = self.expect(children, "count ", 30, "counting")
        return {c: int(line.split()[1]) for c, line in got.items()}

    # -- layout --
    def layout(self):
        a = self.a
        n = a.connections
        servers = a.servers or max(1, math.ceil(n / PER_SERVER))
        clients = a.clients or max(1, math.ceil(n / PER_CLIENT))
        if n / servers > FD_BUDGET * 0.85 or math.ceil(n / clients) > FD_BUDGET:
            raise SystemExit("loadgen: layout would exceed %d fds per process; use more "
                             "--servers/--clients" % FD_BUDGET)
        if ":" in a.listen:                      # IPv6: only ::1 on loopback
            if n > 2 * PER_TUPLE:
                raise SystemExit("loadgen: IPv6 loopback has one address; at most %d "
                                 "connections" % (2 * PER_TUPLE))
            pairs = [("", "::1")]
        else:
            k = a.addresses or max(1, math.ceil(n / PER_TUPLE))
            if k > 254:
                raise SystemExit("loadgen: too many loopback addresses needed")
            addrs = ["127.0.0.%d" % (i + 1) for i in range(k)]
            if a.listen in ("0.0.0.0", ""):
                pairs = [("", d) for d in addrs]          # vary destinations
            elif a.listen.startswith("127."):
                pairs = [(s, a.listen) for s in addrs]     # vary sources
            else:
                raise SystemExit("loadgen: --listen must be 0.0.0.0, ::, or a 127.x address")
        return servers, clients, pairs

    # -- phases --
    def start(self):
        a = self.a
        nserv, ncli, pairs = self.layout()
        log("port %d: %d connections, %d servers, %d clients, %d address pairs" % (
            a.port, a.connections, nserv, ncli, len(pairs)))
        t0 = time.monotonic()
        for i in range(nserv):
            self.servers.append(self.spawn("server%d" % i, "_server", [
                "--port", str(a.port), "--listen", a.listen]))
        self.expect(self.servers, "listening", 30, "starting listeners")
        share = [a.connections // ncli + (1 if i < a.connections % ncli else 0)
                 for i in range(ncli)]
        offset = 0
        pair_arg = ",".join("%s|%s" % p for p in pairs)
        for i, cnt in enumerate(share):
            self.clients.append(self.spawn("client%d" % i, "_client", [
                "--port", str(a.port), "--pairs", pair_arg, "--count", str(cnt),
                "--offset", str(offset), "--window", str(a.window),
                "--setup-timeout", str(a.setup_timeout)]))
            offset += cnt
        got = self.expect(self.clients, "ready", a.setup_timeout + 10, "connecting")
        held_c = sum(int(l.split()[1]) for l in got.values())
        srv = self.counts(self.servers)
        held_s = sum(srv.values())
        log("established in %.1fs: clients hold %d, servers hold %d (%s)" % (
            time.monotonic() - t0, held_c, held_s, " ".join(str(v) for v in srv.values())))
        if held_c != a.connections or held_s != a.connections:
            raise RuntimeError("count mismatch: wanted %d, clients %d, servers %d" % (
                a.connections, held_c, held_s))
        self.held = a.connections
        self.check_ss()

    def check_ss(self):
        """Cross-check with ss(8); informational (other programs may use the port too)."""
        if not shutil.which("ss") or self.a.no_ss_check:
            return
        try:
            out = subprocess.run(
                ["ss", "-Htn", "state", "established", "( sport = :%d )" % self.a.port],
                capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as e:
            log("ss check skipped: %s" % e)
            return
        n = sum(1 for l in out.splitlines() if l.strip())
        log("ss: %d established sockets with local port %d" % (n, self.a.port))
        if n != self.held:
            log("WARNING: ss sees %d, loadgen holds %d" % (n, self.held))

    def write_file(self, path, obj):
        tmp = path + ".tmp.%d" % os.getpid()
        with open(tmp, "w") as f:
            json.dump(obj, f)
            f.write("\n")
        os.rename(tmp, path)

    def close_some(self):
        a = self.a
        group = self.clients if a.close_side == "client" else self.servers
        have = self.counts(group)
        total = sum(have.values())
        want = min(a.close_count, total)
        alloc, left = {}, want
        for i, c in enumerate(group):
            k = want * have[c] // total if total else 0
            alloc[c] = k
            left -= k
        for c in group:                       # hand out the remainder
            if left <= 0:
                break
            if alloc[c] < have[c]:
                alloc[c] += 1
                left -= 1
        for c in group:
            c.send("close %d %s" % (alloc[c], a.close_mode))
        got = self.expect(group, "closed ", 60, "closing")
        closed = sum(int(l.split()[1]) for l in got.values())
        self.held -= closed
        log("closed %d connections (%s side, %s)" % (closed, a.close_side, a.close_mode))
        if a.closed_file:
            self.write_file(a.closed_file, {"closed": closed, "remaining": self.held,
                                            "side": a.close_side, "mode": a.close_mode,
                                            "time": time.time()})

    def hold(self):
        a = self.a
        start = time.monotonic()
        deadline = start + a.max_seconds
        close_at = start + a.close_after if a.close_after is not None else None
        if a.ready_file:
            self.write_file(a.ready_file, {
                "pid": os.getpid(), "port": a.port, "connections": self.held,
                "listen": a.listen, "time": time.time(),
                "children": [c.proc.pid for c in self.children]})
        log("holding %d connections (pid %d; SIGUSR1 closes %d; stop with SIGTERM/SIGINT;"
            " max %ss)" % (self.held, os.getpid(), a.close_count, a.max_seconds))
        while True:
            while self.signals:
                s = self.signals.pop(0)
                if s == signal.SIGUSR1:
                    self.close_some()
                elif s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    log("stop requested by signal %d" % s)
                    return
            now = time.monotonic()
            if close_at is not None and now >= close_at:
                close_at = None
                self.close_some()
            if now >= deadline:
                log("--max-seconds %s reached" % a.max_seconds)
                return
            for c in self.children:
                while c.lines:
                    log("%s: %s" % (c.name, c.lines.pop(0)))
                if c.eof:
                    raise RuntimeError("%s exited unexpectedly (status %s)" % (
                        c.name, c.proc.poll()))
            wait = deadline - now
            if close_at is not None:
                wait = min(wait, close_at - now)
            self.pump(max(0.0, min(wait, 5.0)))

    def stop(self):
        """Clients close first, then servers; anything left is killed."""
        mode = self.a.final_close
        for group in (self.clients, self.servers):
            live = [c for c in group if c.proc.poll() is None and not c.eof]
            for c in live:
                c.send("exit %s" % mode)
            try:
                self.expect(live, "bye", 30, "closing connections", interruptible=False)
            except (RuntimeError, KeyboardInterrupt) as e:
                log("stop: %s" % e)
        for c in self.children:
            try:
                c.proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for c in self.children:
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log("%s did not exit; killing" % c.name)
                c.proc.kill()
                c.proc.wait()


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="loadgen.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold", help="open and hold N loopback connections to one port")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--connections", "-n", type=int, required=True)
    h.add_argument("--ready-file", help="written (JSON) once all connections are established")
    h.add_argument("--max-seconds", type=float, default=600,
                   help="stop by itself after this long (default 600)")
    h.add_argument("--listen", default="0.0.0.0",
                   help="listener address: 0.0.0.0 (default), 127.0.0.1, or :: for IPv6")
    h.add_argument("--servers", type=int, default=0, help="server processes (default: N/8000)")
    h.add_argument("--clients", type=int, default=0, help="client processes (default: N/10000)")
    h.add_argument("--addresses", type=int, default=0,
                   help="loopback addresses to spread over (default: N/10000)")
    h.add_argument("--window", type=int, default=200,
                   help="unanswered connections a client keeps in flight (default 200)")
    h.add_argument("--setup-timeout", type=float, default=300)
    h.add_argument("--close-count", type=int, default=0,
                   help="connections closed on SIGUSR1 or at --close-after")
    h.add_argument("--close-after", type=float, help="seconds after ready to close --close-count")
    h.add_argument("--close-side", choices=("client", "server"), default="client")
    h.add_argument("--close-mode", choices=("fin", "rst"), default="fin")
    h.add_argument("--closed-file", help="written (JSON) after each close")
    h.add_argument("--final-close", choices=("fin", "rst"), default="rst",
                   help="how clients close at exit (default rst: leaves no TIME_WAIT)")
    h.add_argument("--no-ss-check", action="store_true", help="skip the ss(8) cross-check")
    a = p.parse_args(argv)
    if not 1 <= a.port <= 65535:
        p.error("--port must be 1..65535")
    if not 1 <= a.connections <= MAX_CONNECTIONS:
        p.error("--connections must be 1..%d" % MAX_CONNECTIONS)
    if a.max_seconds <= 0:
        p.error("--max-seconds must be > 0")
    if a.close_count < 0 or a.close_count > a.connections:
        p.error("--close-count must be 0..connections")
    if a.window < 1 or a.window > 1000:
        p.error("--window must be 1..1000")
    return a


def main(argv):
    if argv and argv[0] in ("_server", "_client"):
        return child_main(argv[0], argv[1:])
    a = parse_args(argv)
    g = LoadGen(a)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(s, g.on_signal)
    signal.set_wakeup_fd(g.wake_w.fileno(), warn_on_full_buffer=False)
    if a.ready_file and os.path.exists(a.ready_file):
        os.unlink(a.ready_file)
    status = 0
    try:
        g.start()
        g.hold()
    except KeyboardInterrupt:
        log("stop requested during setup")
    except (RuntimeError, OSError) as e:
        log("ERROR: %s" % e)
        status = 1
    finally:
        g.stop()
        for path in (a.ready_file,):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        log("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
