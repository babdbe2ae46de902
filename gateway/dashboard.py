"""The operators' live dashboard: ``/dashboard`` on the admin port.

One HTML page with its script and styles inline (nothing is loaded from the
internet), fed by a server-sent event stream: every second a snapshot of the
fleet (per-node utilization, pressure, sessions; the slot map's owners and heat;
hot keys, overrides, isolated keys; moves in flight and the recent history with
their before/after loads; connections per node; admission). The page keeps the
last minutes of snapshots to draw its charts.

Access is the admin API's: the admin token as a bearer header, or once as
``/dashboard?token=…``, which sets an HttpOnly, SameSite=Strict cookie and
redirects to the page without it (browsers cannot put headers on a page load or
an EventSource). At most ``MAX_STREAMS`` streams are open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from gateway.relay import RELAY

if TYPE_CHECKING:
    from gateway.controlplane.controller import Controller
    from gateway.server import Gateway

__all__ = ["COOKIE", "Dashboard"]

COOKIE: Final = "anchorage_admin"
MAX_STREAMS: Final = 16
PERIOD_S: Final = 1.0


class Dashboard:
    def __init__(self, gw: Gateway, controller: Controller | None):
        self.gw = gw
        self.controller = controller
        self.streams = 0
        self._page: bytes | None = None

    def install(self, router: web.UrlDispatcher) -> None:
        router.add_get("/dashboard", self.page)
        router.add_get("/dashboard/events", self.events)
        router.add_get("/dashboard/snapshot", self.snapshot_json)

    # ------------------------------------------------------------------ handlers

    async def page(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is not None:
            # Checked by the admin middleware already: keep it in a cookie, not the URL.
            resp = web.HTTPFound("/dashboard")
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/dashboard")
            raise resp
        if self._page is None:
            self._page = (resources.files("gateway") / "dashboard.html").read_bytes()
        return web.Response(
            body=self._page,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; img-src 'self' data:",
            },
        )

    async def snapshot_json(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(self.snapshot(full=True), option=orjson.OPT_NON_STR_KEYS),
            content_type="application/json",
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.streams >= MAX_STREAMS:
            return web.Response(status=503, text="too many dashboards open\n")
        self.streams += 1
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        try:
            await resp.prepare(request)
            version = -1
            while True:
                table_version = self._table_version()
                snap = self.snapshot(full=table_version != version)
                version = table_version
                data = orjson.dumps(snap, option=orjson.OPT_NON_STR_KEYS)
                await resp.write(b"data: " + data + b"\n\n")
                await asyncio.sleep(PERIOD_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.streams -= 1
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ data

    def _table_version(self) -> int:
        return self.gw.directory.version()

    def snapshot(self, *, full: bool) -> dict[str, Any]:
        gw = self.gw
        by_node: Counter[str] = Counter()
        for c in gw.conns:
            if c.state == RELAY:
                by_node[c.node] += 1
        snap: dict[str, Any] = {
            "t": time.time(),
            "gateway": {
                "connections": len(gw.conns),
                "relayed": sum(by_node.values()),
                "draining": gw.draining,
                "by_node": dict(by_node),
            },
            "table_version": self._table_version(),
        }
        ctl = self.controller
        if ctl is None:
            snap["mode"] = "static"
            return snap
        snap["mode"] = "control-plane"
        core = ctl.core
        status = core.status()
        d = ctl.dir
        heat: dict[int, float] = {}
        hot: list[dict[str, Any]] = []
        for n in d.nodes.values():
            if n.load is None:
                continue
            for s, r in n.load.slots.items():
                heat[s] = heat.get(s, 0.0) + r
            hot += [
                {"key": k, "slot": s, "rate": round(r, 1), "node": n.id}
                for k, s, r in n.load.hot_keys[:8]
            ]
        hot.sort(key=lambda h: -h["rate"])
        snap.update(
            nodes=status["nodes"],
            imbalance=status["imbalance"],
            shedding=status["shedding"],
            paused=status["paused"],
            isolated=status["isolated"],
            moves_done=status["moves"],
            in_flight=[
                {
                    "id": rec.id,
                    "src": rec.src,
                    "units": len(rec.targets),
                    "dst": sorted({dst for _, dst in rec.targets}),
                    "reason": rec.reason,
                    "epoch": rec.epoch,
                }
                for rec in d.moves.values()
            ],
            history=[h.to_json() for h in list(core.history.items)[-20:]],
            hot_keys=hot[:20],
            overrides={k: list(v) for k, v in list(d.table.overrides.items())[:50]},
            override_count=len(d.table.overrides),
            heat={str(s): round(r, 2) for s, r in heat.items() if r >= 0.05},
        )
        if full:
            snap["owners"] = d.table.owners
        return snap
