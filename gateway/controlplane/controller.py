"""Move orchestration and the backends' control sessions (the I/O around the planner).

A move of units from ``src`` is a fenced two-step handoff:

1. ``release`` (with the new epoch) → src freezes the units, flushes their
   state and replay buffers at that epoch, answers ``released``;
2. the directory commits the new owners at that epoch, the table is pushed to
   every backend, and src is told ``commit``: it closes the units' sessions with
   4000 "moved" and a reconnect window.

No answer within ``move_timeout_s`` → ``abort``: src keeps the units, at the
new epoch (its flush may already carry it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import math
import time
from collections import deque
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web

from gateway.controlplane.directory import EmbeddedDirectory
from gateway.controlplane.planner import (
    Move,
    NodeLoad,
    PlannerConfig,
    PlannerState,
    Unit,
    imbalance,
    plan,
)
from gateway.server import Gateway

log = structlog.get_logger("gateway.control")


class Controller:
    def __init__(
        self,
        gw: Gateway,
        directory: EmbeddedDirectory,
        secret: str,
        *,
        planner: PlannerConfig | None = None,
        rebalance: bool = True,
        tick_s: float = 0.5,
        move_timeout_s: float = 3.0,
        settle_s: float = 1.0,
        settle_after_move_s: float = 1.5,
        ewma_tau_s: float = 1.5,
    ):
        self.gw = gw
        self.dir = directory
        self.secret = secret
        self.cfg = planner or PlannerConfig()
        self.state = PlannerState()
        self.paused = not rebalance
        self.tick_s = tick_s
        self.move_timeout_s = move_timeout_s
        self.settle_s = settle_s
        self.settle_after_move_s = settle_after_move_s
        self.ewma_tau_s = ewma_tau_s
        self.send_timeout_s = 2.0
        self.sessions: dict[str, web.WebSocketResponse] = {}
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.in_flight: set[str] = set()
        self.history: deque[dict[str, Any]] = deque(maxlen=500)
        self.moves_done = 0
        self.moved_load = 0.0
        self.isolated: tuple[str, ...] = ()
        self._ids = itertools.count(1)
        self._first_register: float | None = None
        # Moved load not yet visible in the destination's smoothed rate: (time, node, load).
        self._arrivals: deque[tuple[float, str, float]] = deque(maxlen=1000)
        self._settle_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._moves: set[asyncio.Task[bool]] = set()
        gw.admission = self._admission

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for ws in list(self.sessions.values()):
            await ws.close()

    def ready(self) -> bool:
        return bool(self.dir.live()) and None not in self.dir.table.owners

    def _admission(self) -> int | None:
        return 2 if self.state.shedding else None

    # ------------------------------------------------------------------ control sessions

    async def control_endpoint(self, request: web.Request) -> web.StreamResponse:
        got = request.headers.get("Authorization", "")
        if not (
            got.startswith("Bearer ")
            and hmac.compare_digest(got[7:].encode(), self.secret.encode())
        ):
            log.warning("control_auth_failed", peer=request.remote)
            return web.json_response({"error": "bad control secret"}, status=401)
        ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=4 << 20)
        await ws.prepare(request)
        node: str | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT and msg.type != WSMsgType.BINARY:
                    break
                try:
                    m = orjson.loads(msg.data)
                    node = await self._on_message(ws, node, m)
                except (ValueError, KeyError, TypeError) as exc:
                    await ws.send_bytes(orjson.dumps({"t": "error", "error": str(exc)[:200]}))
        finally:
            if node is not None and self.sessions.get(node) is ws:
                del self.sessions[node]
        return ws

    async def _on_message(
        self, ws: web.WebSocketResponse, node: str | None, m: dict[str, Any]
    ) -> str | None:
        t = m["t"]
        if t == "register":
            node = str(m["node"])
            host, _, port = str(m["addr"]).rpartition(":")
            capacity = float(m["capacity"])
            if not host or not port.isdigit() or capacity <= 0:
                raise ValueError("register needs addr HOST:PORT and capacity > 0")
            old = self.sessions.get(node)
            if old is not None and old is not ws:
                await old.close()
            self.dir.register(node, (host, int(port)), capacity)
            self.sessions[node] = ws
            if self._first_register is None:
                self._first_register = time.monotonic()
            log.info("node_registered", node=node, addr=m["addr"], capacity=capacity)
            await ws.send_bytes(self._table_msg())
            return node
        if node is None:
            raise ValueError("register first")
        if t == "report":
            self.dir.renew(node, m["load"])
        elif t == "released":
            fut = self.pending.get(int(m["move"]))
            if fut is not None and not fut.done():
                fut.set_result(int(m.get("flushed", 0)))
            # An ack for a move not in flight (late or forged) is ignored.
        elif t == "leave":
            await self._leave(node, ws)
        else:
            raise ValueError(f"unknown control message {str(t)[:32]!r}")
        return node

    def _table_msg(self) -> bytes:
        return orjson.dumps({"t": "table", "table": self.dir.table.to_json()})

    async def push_table(self) -> None:
        data = self._table_msg()
        await asyncio.gather(*(self._send_raw(ws, data) for ws in list(self.sessions.values())))

    async def _send(self, node: str, obj: dict[str, Any]) -> bool:
        ws = self.sessions.get(node)
        if ws is None or ws.closed:
            return False
        return await self._send_raw(ws, orjson.dumps(obj))

    async def _send_raw(self, ws: web.WebSocketResponse, data: bytes) -> bool:
        """Send to one backend; one that does not take it in time is disconnected, so a
        stuck peer never holds up the control plane (it re-registers when it recovers)."""
        try:
            await asyncio.wait_for(ws.send_bytes(data), self.send_timeout_s)
            return True
        except TimeoutError:
            log.warning("control_peer_stuck", timeout_s=self.send_timeout_s)
            asyncio.get_running_loop().create_task(ws.close())
            return False
        except (ConnectionError, RuntimeError):
            return False

    async def _leave(self, node: str, ws: web.WebSocketResponse) -> None:
        """A node is stopping after flushing everything: reassign all it owns at once."""
        e = self.dir.nodes.get(node)
        if e is None:
            return
        e.leaving = True
        targets = [n.id for n in self.dir.live()]
        units = self.dir.units_of(node)
        self.dir.spread(units, targets)
        await self.push_table()
        self._record("leave", node, None, units, 0.0, "done")
        log.info("node_left", node=node, units=len(units))
        await ws.send_bytes(orjson.dumps({"t": "left"}))

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick(time.monotonic())
            except Exception:
                log.exception("control_tick_failed")

    async def tick(self, now: float) -> None:
        changed = False
        for node in self.dir.expire():
            targets = [n.id for n in self.dir.live()]
            units = self.dir.units_of(node)
            self.dir.spread(units, targets)
            self._record("dead", node, None, units, 0.0, "done")
            log.warning("node_dead", node=node, units=len(units), to=len(targets))
            changed = True
        if (
            self._first_register is not None
            and now - self._first_register >= self.settle_s
            and self.dir.assign_unowned()
        ):
            changed = True
        if changed:
            await self.push_table()
        live = self.dir.live()
        loads = [self._projected(n.to_load(), now) for n in live if n.load]
        if len(loads) != len(live):
            return  # wait for every node's first report
        settling = {n for n, until in self._settle_until.items() if until > now}
        paused = {n.id for n in live} if self.paused else set()
        busy = frozenset(self.in_flight | settling | paused)
        p = plan(loads, self.dir.table, self.state, now, self.cfg, busy)
        self.gw.metrics.admission_closed.set(1 if p.shed else 0)
        self.isolated = p.isolated
        if p.moves:
            by_src: dict[str, list[Move]] = {}
            for mv in p.moves:
                by_src.setdefault(mv.src, []).append(mv)
            before = {n.node: round(n.util, 3) for n in loads}
            for src, mvs in by_src.items():
                task = asyncio.get_running_loop().create_task(
                    self.execute(src, mvs, p.reason, before)
                )
                self._moves.add(task)
                task.add_done_callback(self._moves.discard)

    def _projected(self, load: NodeLoad, now: float) -> NodeLoad:
        """A node's load as its smoothed rate will show it once recent arrivals settle.

        The backend's EWMA (time constant ``ewma_tau_s``) shows a key that just
        arrived at only a fraction of its rate; without this the planner would
        see room that is already taken and over-move.
        """
        extra = sum(
            ld * math.exp(-(now - t) / self.ewma_tau_s)
            for t, n, ld in self._arrivals
            if n == load.node
        )
        return dataclasses.replace(load, rate=load.rate + extra) if extra > 0.01 else load

    async def execute(
        self, src: str, moves: list[Move], reason: str, before: dict[str, float] | None = None
    ) -> bool:
        """Run one batch of moves off ``src``; True if committed."""
        move_id = next(self._ids)
        involved = {src} | {m.dst for m in moves}
        self.in_flight |= involved
        units = [m.unit for m in moves]
        epoch = self.dir.next_epoch()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[move_id] = fut
        load = sum(m.load for m in moves)
        started = time.monotonic()
        try:
            if not await self._send(
                src,
                {
                    "t": "release",
                    "move": move_id,
                    "units": [list(u) for u in units],
                    "epoch": epoch,
                },
            ):
                self._record(reason, src, None, units, load, "aborted: source unreachable")
                return False
            try:
                await asyncio.wait_for(fut, self.move_timeout_s)
            except TimeoutError:
                # The source may have flushed at `epoch`: it keeps the units at that epoch.
                for u in units:
                    if self.dir.owner_of(u) == src:
                        self.dir.assign(u, src, epoch)
                self.dir.save()
                await self._send(
                    src, {"t": "abort", "move": move_id, "units": [list(u) for u in units]}
                )
                await self.push_table()
                self._record(reason, src, None, units, load, "aborted: timeout")
                return False
            for m in moves:
                if self.dir.owner_of(m.unit) == src:
                    self.dir.assign(m.unit, m.dst, epoch)
            self.dir.save()
            await self.push_table()
            await self._send(
                src, {"t": "commit", "move": move_id, "units": [list(u) for u in units]}
            )
            done_at = time.monotonic()
            for m in moves:
                self._arrivals.append((done_at, m.dst, m.load))
            for n in involved:  # let fresh reports reflect the move before the next one
                self._settle_until[n] = done_at + self.settle_after_move_s
            self.moves_done += len(moves)
            self.moved_load += load
            dsts = sorted({m.dst for m in moves})
            self._record(
                reason, src, ",".join(dsts), units, load, "done", before, time.monotonic() - started
            )
            log.info(
                "moved",
                move=move_id,
                reason=reason,
                src=src,
                dst=dsts,
                units=len(units),
                load=round(load, 1),
                epoch=epoch,
            )
            return True
        finally:
            self.pending.pop(move_id, None)
            self.in_flight -= involved

    def _record(
        self,
        reason: str,
        src: str,
        dst: str | None,
        units: list[Unit],
        load: float,
        outcome: str,
        before: dict[str, float] | None = None,
        duration: float | None = None,
    ) -> None:
        self.history.append(
            {
                "at": time.time(),
                "reason": reason,
                "src": src,
                "dst": dst,
                "units": [list(u) for u in units[:20]],
                "unit_count": len(units),
                "load": round(load, 2),
                "outcome": outcome,
                "utilization_before": before or {},
                "utilization_after": {
                    n.id: round(n.to_load().util, 3) for n in self.dir.live() if n.load
                },
                "duration_ms": None if duration is None else round(duration * 1000, 1),
            }
        )

    # ------------------------------------------------------------------ admin actions

    async def manual_move(self, unit: Unit, to: str, *, pin: bool = False) -> int:
        e = self.dir.nodes.get(to)
        if e is None or not e.alive:
            raise ValueError(f"no live node {to!r}")
        src = self.dir.owner_of(unit)
        if src == to:
            # Pin (or unpin) in place: the rebalancer leaves a pinned unit alone.
            if pin:
                self.state.moved_at[unit] = float("inf")
            else:
                self.state.moved_at.pop(unit, None)
            return self.moves_done
        if src is None:
            raise ValueError("unit has no owner to move from")
        if src in self.in_flight or to in self.in_flight:
            raise ValueError("a move involving these nodes is in flight")
        if pin:
            self.state.moved_at[unit] = float("inf")  # never moved by the rebalancer again
        ok = await self.execute(src, [Move(unit, src, to, 0.0)], "manual")
        if not ok:
            raise ValueError("move aborted")
        return self.moves_done

    async def drain_node(self, node: str) -> int:
        """Move everything off a live node (it may stop afterwards)."""
        e = self.dir.nodes.get(node)
        if e is None or not e.alive:
            raise ValueError(f"no live node {node!r}")
        e.leaving = True
        targets = [n.id for n in self.dir.live()]
        if not targets:
            e.leaving = False
            raise ValueError("no other node to drain to")
        units = self.dir.units_of(node)
        moves = [Move(u, node, targets[i % len(targets)], 0.0) for i, u in enumerate(units)]
        ok = await self.execute(node, moves, "drain")
        return len(moves) if ok else 0

    def status(self) -> dict[str, Any]:
        live = self.dir.live()
        loads = [n.to_load() for n in live if n.load]
        return {
            "nodes": {
                n.id: {
                    "rate": n.load.get("rate", 0.0),
                    "capacity": n.capacity,
                    "util": round(float(n.load.get("rate", 0.0)) / n.capacity, 4),
                    "pressure": n.load.get("pressure", False),
                    "sessions": n.load.get("sessions", 0),
                    "alive": n.alive,
                    "slots": self.dir.table.owners.count(n.id),
                }
                for n in self.dir.nodes.values()
            },
            "imbalance": round(imbalance(loads), 4) if loads else None,
            "moves": self.moves_done,
            "moved_load": round(self.moved_load, 2),
            "moves_in_flight": len(self.in_flight),
            "shedding": self.state.shedding,
            "paused": self.paused,
            "isolated": list(self.isolated),
            "overrides": len(self.dir.table.overrides),
        }
