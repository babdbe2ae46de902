"""Move execution and move history.

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
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import Unit
from gateway.controlplane.directory import EmbeddedDirectory
from gateway.controlplane.endpoint import ControlEndpoint
from gateway.controlplane.planner import Move, NodeLoad

__all__ = ["MoveExecutor", "MoveHistory", "MoveRecord"]

log = structlog.get_logger("gateway.control")


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """One entry of the move history (admin API ``/v1/moves``)."""

    at: float  # wall clock
    reason: str
    src: str
    dst: str | None
    units: tuple[Unit, ...]
    load: float
    outcome: str
    utilization_before: dict[str, float] = field(default_factory=dict)
    utilization_after: dict[str, float] = field(default_factory=dict)
    duration_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "reason": self.reason,
            "src": self.src,
            "dst": self.dst,
            "units": [list(u) for u in self.units[:20]],
            "unit_count": len(self.units),
            "load": round(self.load, 2),
            "outcome": self.outcome,
            "utilization_before": self.utilization_before,
            "utilization_after": self.utilization_after,
            "duration_ms": self.duration_ms,
        }


class MoveHistory:
    """The last ``size`` moves, with the fleet's utilization after each."""

    def __init__(self, directory: EmbeddedDirectory, size: int = 500):
        self.dir = directory
        self.items: deque[MoveRecord] = deque(maxlen=size)

    def record(
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
        self.items.append(
            MoveRecord(
                at=time.time(),
                reason=reason,
                src=src,
                dst=dst,
                units=tuple(units),
                load=load,
                outcome=outcome,
                utilization_before=before or {},
                utilization_after={
                    n.id: round(n.load.util, 3) for n in self.dir.live() if n.load is not None
                },
                duration_ms=None if duration is None else round(duration * 1000, 1),
            )
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.items]


class MoveExecutor:
    """Runs batches of moves and remembers what they did to the nodes' loads."""

    def __init__(
        self,
        directory: EmbeddedDirectory,
        endpoint: ControlEndpoint,
        history: MoveHistory,
        *,
        move_timeout_s: float = 3.0,
        settle_after_move_s: float = 1.5,
        ewma_tau_s: float = 1.5,
    ):
        self.dir = directory
        self.endpoint = endpoint
        self.history = history
        self.move_timeout_s = move_timeout_s
        self.settle_after_move_s = settle_after_move_s
        self.ewma_tau_s = ewma_tau_s
        self.in_flight: set[str] = set()
        self.moves_done = 0
        self.moved_load = 0.0
        self._pending: dict[int, tuple[str, asyncio.Future[int]]] = {}
        self._ids = itertools.count(1)
        # Moved load not yet visible in the destination's smoothed rate: (time, node, load).
        self._arrivals: deque[tuple[float, str, float]] = deque(maxlen=1000)
        self._settle_until: dict[str, float] = {}

    def released(self, node: str, msg: cp.Released) -> None:
        """The source's ``released``; one for a move not in flight, or from another node
        than the move's source, is ignored (late or forged)."""
        pending = self._pending.get(msg.move)
        if pending is None:
            return
        src, fut = pending
        if src != node:
            log.warning("released_from_wrong_node", move=msg.move, node=node, src=src)
            return
        if not fut.done():
            fut.set_result(msg.flushed)

    def settling(self, now: float) -> set[str]:
        """Nodes that finished a move too recently for their reports to show it."""
        return {n for n, until in self._settle_until.items() if until > now}

    def projected(self, load: NodeLoad, now: float) -> NodeLoad:
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
        units = tuple(m.unit for m in moves)
        epoch = self.dir.next_epoch()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[move_id] = (src, fut)
        load = sum(m.load for m in moves)
        started = time.monotonic()
        try:
            if not await self.endpoint.send(src, cp.Release(move_id, units, epoch)):
                self.history.record(
                    reason, src, None, list(units), load, "aborted: source unreachable"
                )
                return False
            try:
                await asyncio.wait_for(fut, self.move_timeout_s)
            except TimeoutError:
                await self._abort(move_id, src, units, epoch)
                self.history.record(reason, src, None, list(units), load, "aborted: timeout")
                return False
            for m in moves:
                if self.dir.owner_of(m.unit) == src:
                    self.dir.assign(m.unit, m.dst, epoch)
            self.dir.save()
            await self.endpoint.broadcast(cp.TableUpdate(self.dir.table))
            await self.endpoint.send(src, cp.Commit(move_id, units))
            self._committed(moves, involved)
            dsts = sorted({m.dst for m in moves})
            self.history.record(
                reason,
                src,
                ",".join(dsts),
                list(units),
                load,
                "done",
                before,
                time.monotonic() - started,
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
            self._pending.pop(move_id, None)
            self.in_flight -= involved

    async def _abort(self, move_id: int, src: str, units: tuple[Unit, ...], epoch: int) -> None:
        # The source may have flushed at `epoch`: it keeps the units at that epoch.
        for u in units:
            if self.dir.owner_of(u) == src:
                self.dir.assign(u, src, epoch)
        self.dir.save()
        await self.endpoint.send(src, cp.Abort(move_id, units))
        await self.endpoint.broadcast(cp.TableUpdate(self.dir.table))

    def _committed(self, moves: list[Move], involved: set[str]) -> None:
        done_at = time.monotonic()
        for m in moves:
            self._arrivals.append((done_at, m.dst, m.load))
        for n in involved:  # let fresh reports reflect the move before the next one
            self._settle_until[n] = done_at + self.settle_after_move_s
        self.moves_done += len(moves)
        self.moved_load += sum(m.load for m in moves)
