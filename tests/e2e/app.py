"""Backend application: a small JSON API and a WebSocket endpoint on one port.

nginx proxies both to this process. The admin API listens on a unix socket, so
that driving the app never adds a TCP connection on a watched port.

  GET  /api/items          small JSON document naming the backend
  GET  /api/slow?ms=N      the same after N ms (at most 10 s)
  GET  /ws                 WebSocket: a hello, then a push every --push-interval s;
                           pings are answered (aiohttp autoping)
  POST /admin/close-ws?code=1001&rate=20   (unix socket) close every session with
                           `code`, `rate` sessions per second; returns the count
  GET  /admin/stats        (unix socket) open sessions; sessions it closed, by code
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

from aiohttp import WSMsgType, web

SESSIONS = web.AppKey("sessions", dict)  # WebSocketResponse -> close request
CLOSES = web.AppKey("closes", Counter)
NAME = web.AppKey("name", str)
PUSH_INTERVAL = web.AppKey("push_interval", float)
PUBLIC = web.AppKey("public", web.Application)


async def items(request: web.Request) -> web.Response:
    app = request.app
    return web.json_response({"backend": app[NAME], "t": time.time(), "items": list(range(8))})


async def slow(request: web.Request) -> web.Response:
    ms = min(int(request.query.get("ms", "100")), 10_000)
    await asyncio.sleep(ms / 1000)
    return await items(request)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    close_request: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    app[SESSIONS][ws] = close_request
    pusher = asyncio.create_task(_push(ws, app[NAME], app[PUSH_INTERVAL]))
    try:
        await ws.send_json({"hello": app[NAME]})
        while not ws.closed:
            receive = asyncio.ensure_future(ws.receive())
            await asyncio.wait({receive, close_request}, return_when=asyncio.FIRST_COMPLETED)
            if receive.done():
                msg = receive.result()
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                continue
            # Close from this task, not the admin's: aiohttp's close() from another
            # task while receive() waits drops the peer's Close reply unread, and
            # the kernel then answers it with an RST instead of a clean FIN.
            receive.cancel()
            await asyncio.gather(receive, return_exceptions=True)
            await ws.close(code=close_request.result(), message=b"going away")
    finally:
        pusher.cancel()
        del app[SESSIONS][ws]
    return ws


async def _push(ws: web.WebSocketResponse, name: str, interval: float) -> None:
    seq = 0
    while not ws.closed:
        await asyncio.sleep(interval)
        seq += 1
        try:
            await ws.send_json({"backend": name, "seq": seq, "t": time.time()})
        except ConnectionError:
            return


async def close_ws(request: web.Request) -> web.Response:
    """Close all sessions with the given code, in batches of `rate` per second."""
    app = request.app[PUBLIC]
    code = int(request.query.get("code", "1001"))
    rate = max(1, int(request.query.get("rate", "20")))
    sessions = list(app[SESSIONS].items())
    for start in range(0, len(sessions), rate):
        batch = sessions[start:start + rate]
        for _, close_request in batch:
            if not close_request.done():
                close_request.set_result(code)
        app[CLOSES][str(code)] += len(batch)
        await asyncio.sleep(1.0)
    return web.json_response({"closed": len(sessions), "code": code})


async def stats(request: web.Request) -> web.Response:
    app = request.app[PUBLIC]
    return web.json_response({"open": len(app[SESSIONS]), "closed_by_app": dict(app[CLOSES])})


def make_app(name: str, push_interval: float) -> web.Application:
    app = web.Application()
    app[NAME] = name
    app[PUSH_INTERVAL] = push_interval
    app[SESSIONS] = {}
    app[CLOSES] = Counter()
    app.add_routes([web.get("/api/items", items), web.get("/api/slow", slow), web.get("/ws", websocket)])
    return app


def make_admin(app: web.Application) -> web.Application:
    admin = web.Application()
    admin[PUBLIC] = app
    admin.add_routes([web.post("/admin/close-ws", close_ws), web.get("/admin/stats", stats)])
    return admin


async def serve(args: argparse.Namespace) -> None:
    app = make_app(args.name, args.push_interval)
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(make_admin(app), access_log=None)]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], args.host, args.port).start()
    await web.UnixSite(runners[1], args.admin_socket).start()
    print(json.dumps({"event": "listening", "name": args.name, "port": args.port}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-socket", required=True)
    parser.add_argument("--push-interval", type=float, default=3.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
