"""Client load through the L4 load balancer; one JSON line per connection.

Classes of connection:
  api    persistent HTTP/1.1 keep-alive connections, a request every U(lo, hi)
         seconds, reconnecting at once when the server closes them
  ws     long-lived WebSocket sessions (ping every 5 s), reconnecting with full
         jitter exponential backoff; with --ws-lifetime LO HI the client ends each
         session itself (close 1000) after U(LO, HI) seconds and reconnects
  short  one `Connection: close` request per connection, at a fixed rate
  abort  a request to /api/slow, then an abortive close (SO_LINGER 0, i.e. RST),
         at a fixed rate while enabled: SIGUSR1 enables, SIGUSR2 disables

Every loop stops at SIGTERM or after --duration seconds, whichever comes first,
and no client opens more than MAX_CONNECTIONS_PER_CLIENT connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import IO

import aiohttp

MAX_CONNECTIONS_PER_CLIENT = 5000
RESPONSE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
WS_HEARTBEAT = 5.0
WS_BACKOFF_BASE = 0.5
WS_BACKOFF_CAP = 8.0
WS_STABLE_AFTER = 10.0
MAX_IN_FLIGHT = 50


@dataclass
class Record:
    """One client connection, as the client saw it."""

    cls: str
    id: str
    open: float = field(default_factory=time.time)
    up: float | None = None
    close: float | None = None
    end: str = ""
    backend: str | None = None
    requests: int = 0
    close_code: int | None = None
    detail: str = ""
    fault: str | None = None


class Load:
    def __init__(self, args: argparse.Namespace, log: IO[str]) -> None:
        self.args = args
        self.log = log
        self.deadline = time.monotonic() + args.duration
        self.stop = asyncio.Event()
        self.aborts_enabled = False
        self.rng = random.Random(args.seed)
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    async def pause(self, seconds: float) -> None:
        """Sleep, waking early at stop."""
        seconds = max(0.0, min(seconds, self.deadline - time.monotonic()))
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass

    def write(self, rec: Record) -> None:
        rec.close = rec.close or time.time()
        self.log.write(json.dumps(asdict(rec)) + "\n")
        self.log.flush()

    # --- plain HTTP -------------------------------------------------------

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(self.args.host, self.args.port), CONNECT_TIMEOUT)

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       path: str, close: bool) -> tuple[dict, bool]:
        """Send one GET; return the JSON body and whether the server will close."""
        conn = "close" if close else "keep-alive"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: {conn}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RESPONSE_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), RESPONSE_TIMEOUT)
        if status != 200:
            raise HttpError(f"status {status}")
        return json.loads(body), headers.get("connection", "").lower() == "close"

    async def api_client(self, idx: int) -> None:
        for n in range(MAX_CONNECTIONS_PER_CLIENT):
            if not self.running():
                return
            rec = Record("api", f"api-{idx}-{n}")
            try:
                reader, writer = await self._connect()
            except (OSError, TimeoutError) as exc:
                rec.end, rec.detail = "connect_error", repr(exc)
                self.write(rec)
                await self.pause(0.5)
                continue
            rec.up = time.time()
            try:
                while self.running():
                    body, server_closes = await self._request(reader, writer, "/api/items", close=False)
                    rec.requests += 1
                    rec.backend = rec.backend or body.get("backend")
                    if server_closes:
                        rec.end = "server_close"
                        break
                    await self.pause(self.rng.uniform(*self.args.api_interval))
                else:
                    rec.end = "client_stop"
            except Exception as exc:  # every way a connection can fail is a result here
                rec.end, rec.detail = _failure(exc), repr(exc)
            finally:
                rec.close = time.time()
                writer.close()
                self.write(rec)
            await self.pause(self.rng.uniform(0.0, 0.1))

    async def _one_shot(self, rec: Record, path: str, abort_after: float | None) -> None:
        async with self.in_flight:
            try:
                reader, writer = await self._connect()
            except (OSError, TimeoutError) as exc:
                rec.end, rec.detail = "connect_error", repr(exc)
                self.write(rec)
                return
            rec.up = time.time()
            try:
                if abort_after is None:
                    body, _ = await self._request(reader, writer, path, close=True)
                    rec.requests, rec.backend, rec.end = 1, body.get("backend"), "complete"
                else:
                    writer.write(f"GET {path} HTTP/1.1\r\nHost: lb\r\n\r\n".encode())
                    await asyncio.sleep(abort_after)
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    rec.end, rec.fault = "client_abort", "client_rst"
            except Exception as exc:
                rec.end, rec.detail = _failure(exc), repr(exc)
            finally:
                rec.close = time.time()
                if rec.fault:
                    writer.transport.abort()
                else:
                    writer.close()
                self.write(rec)

    async def rate_loop(self, cls: str, rate: float, path: str, abort_after: float | None) -> None:
        tasks: set[asyncio.Task] = set()
        for n in range(int(rate * self.args.duration) + 1):
            if not self.running():
                break
            if cls != "abort" or self.aborts_enabled:
                task = asyncio.create_task(self._one_shot(Record(cls, f"{cls}-{n}"), path, abort_after))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await self.pause(1.0 / rate)
        if tasks:
            await asyncio.wait(tasks, timeout=RESPONSE_TIMEOUT + CONNECT_TIMEOUT)

    # --- WebSocket --------------------------------------------------------

    async def ws_client(self, idx: int, session: aiohttp.ClientSession) -> None:
        url = f"http://{self.args.host}:{self.args.port}/ws"
        attempt = 0
        for n in range(MAX_CONNECTIONS_PER_CLIENT):
            if not self.running():
                return
            rec = Record("ws", f"ws-{idx}-{n}")
            try:
                ws = await session.ws_connect(url, heartbeat=WS_HEARTBEAT, timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
            except Exception as exc:
                rec.end, rec.detail = "connect_error", repr(exc)
                self.write(rec)
                attempt += 1
                await self.pause(self._backoff(attempt))
                continue
            rec.up = time.time()
            reader = asyncio.create_task(self._ws_receive(ws, rec))
            hold = self.deadline - time.monotonic()
            if self.args.ws_lifetime[1] > 0:
                hold = min(hold, self.rng.uniform(*self.args.ws_lifetime))
            stopper = asyncio.create_task(self.pause(hold))
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                rec.end = "client_stop" if not self.running() else "client_lifetime"
                await ws.close(code=1000)
                await asyncio.wait_for(reader, 6.0)
            stopper.cancel()
            rec.close = time.time()
            rec.close_code = ws.close_code
            if not rec.end:
                exc = ws.exception()
                rec.end = "server_close" if exc is None else _failure(exc)
                rec.detail = "" if exc is None else repr(exc)
            self.write(rec)
            healthy = rec.end == "client_lifetime" or rec.close - rec.up > WS_STABLE_AFTER
            attempt = 0 if healthy else attempt + 1
            await self.pause(self._backoff(attempt))

    async def _ws_receive(self, ws: aiohttp.ClientWebSocketResponse, rec: Record) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                rec.backend = rec.backend or data.get("hello")
                rec.requests += 1

    def _backoff(self, attempt: int) -> float:
        """Full jitter: U(0, min(cap, base * 2^attempt))."""
        return self.rng.uniform(0.0, min(WS_BACKOFF_CAP, WS_BACKOFF_BASE * 2 ** attempt))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(self, "aborts_enabled", True))
        loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(self, "aborts_enabled", False))
        a = self.args
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [self.api_client(i) for i in range(a.api)]
            tasks += [self.ws_client(i, session) for i in range(a.ws)]
            if a.short_rate > 0:
                tasks.append(self.rate_loop("short", a.short_rate, "/api/items", None))
            if a.abort_rate > 0:
                tasks.append(self.rate_loop("abort", a.abort_rate, "/api/slow?ms=2000", 0.2))
            # Ramp up: spread the persistent clients' first connections over a
            # second so the start is not one synchronized burst.
            await asyncio.gather(*(_delayed(t, self.rng.uniform(0, a.ramp)) for t in tasks))


class HttpError(Exception):
    pass


def _failure(exc: BaseException) -> str:
    """Name how a connection failed, from the client's side."""
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, (asyncio.IncompleteReadError, ConnectionError, aiohttp.ServerDisconnectedError)):
        return "eof"
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, HttpError):
        return "http_error"
    return "error"


async def _delayed(coro, delay: float) -> None:
    await asyncio.sleep(delay)
    await coro


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--duration", type=float, required=True, help="hard upper bound, seconds")
    parser.add_argument("--api", type=int, default=30)
    parser.add_argument("--api-interval", type=float, nargs=2, default=(0.2, 1.0))
    parser.add_argument("--ws", type=int, default=80)
    parser.add_argument("--ws-lifetime", type=float, nargs=2, default=(0.0, 0.0),
                        help="seconds after which a client ends its session itself (0 0: never)")
    parser.add_argument("--short-rate", type=float, default=4.0, help="connections per second")
    parser.add_argument("--abort-rate", type=float, default=0.0, help="connections per second while enabled")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which clients start")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    with open(args.log, "a") as log:
        asyncio.run(Load(args, log).run())


if __name__ == "__main__":
    main()
