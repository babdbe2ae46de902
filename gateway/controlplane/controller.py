"""The control plane's asyncio shell: runs :class:`ControlCore` and carries out its effects.

Every ``tick_s`` it asks the core what time has brought (leases run out,
releases to resend, moves to time out, the planner's moves) and does it; the
backends' messages arrive through the :class:`ControlEndpoint`. The admin
actions (pause, manual move, node drain) are here too: a manual move waits for
its outcome.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import Unit
from gateway.controlplane.core import (
    Broadcast,
    ControlCore,
    CoreConfig,
    Disconnect,
    Effect,
    MoveFinished,
    Send,
)
from gateway.controlplane.directory import EmbeddedDirectory
from gateway.controlplane.endpoint import ControlEndpoint
from gateway.controlplane.metrics import ControlPlaneCollector
from gateway.controlplane.planner import Move, PlannerConfig
from gateway.metrics import GatewayMetrics

__all__ = ["Controller"]

log = structlog.get_logger("gateway.control")


class Controller:
    def __init__(
        self,
        directory: EmbeddedDirectory,
        secret: str,
        metrics: GatewayMetrics,
        *,
        config: CoreConfig | None = None,
        planner: PlannerConfig | None = None,
        tick_s: float = 0.5,
    ):
        self.dir = directory
        self.metrics = metrics
        self.core = ControlCore(directory, config, planner, wall=time.time)
        self.endpoint = ControlEndpoint(secret, self)
        ControlPlaneCollector(self.core, metrics, directory.clock)
        self.tick_s = tick_s
        self._task: asyncio.Task[None] | None = None
        self._waiters: dict[int, asyncio.Future[MoveFinished]] = {}
        self._lock = asyncio.Lock()  # effects go out in the order the core made them

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.endpoint.close()

    def ready(self) -> bool:
        return self.core.ready()

    def stale_note(self) -> str:
        """A line for ``/readyz`` when routes come from a copy that may be out of date."""
        return ""

    def admission(self) -> int | None:
        """Retry-After (seconds) for new upgrades while the fleet sheds load, else None."""
        return 2 if self.core.state.shedding else None

    @property
    def paused(self) -> bool:
        return self.core.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self.core.paused = value

    # ------------------------------------------------------------------ ControlHandler

    async def registered(self, msg: cp.Register) -> str | None:
        accepted, effects = self.core.register(time.monotonic(), msg)
        if not accepted:
            return self.core.refusal(msg)
        await self._apply(effects)
        return None

    async def received(self, node: str, msg: cp.Report | cp.Released | cp.Leave) -> None:
        await self._apply(self.core.received(time.monotonic(), node, msg))

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._apply(self.core.tick(time.monotonic()))
                self.metrics.admission_closed.set(1 if self.core.shed else 0)
            except Exception:
                log.exception("control_tick_failed")

    async def _apply(self, effects: list[Effect]) -> None:
        async with self._lock:
            for e in effects:
                match e:
                    case Send(node, msg):
                        await self.endpoint.send(node, msg)
                    case Broadcast(msg):
                        await self.endpoint.broadcast(msg)
                    case Disconnect(node, _):
                        await self.endpoint.disconnect(node)
                    case MoveFinished(move, _, _):
                        fut = self._waiters.pop(move, None)
                        if fut is not None and not fut.done():
                            fut.set_result(e)

    async def _run_move(self, src: str, moves: list[Move], reason: str) -> MoveFinished:
        move_id, effects = self.core.start_move(time.monotonic(), src, moves, reason)
        fut: asyncio.Future[MoveFinished] = asyncio.get_running_loop().create_future()
        self._waiters[move_id] = fut
        await self._apply(effects)
        # The core times the move out; this only guards against a core that never does.
        return await asyncio.wait_for(fut, self.core.cfg.move_timeout_s * 4 + 5)

    # ------------------------------------------------------------------ admin actions

    async def manual_move(self, unit: Unit, to: str, *, pin: bool = False) -> int:
        d = self.dir
        e = d.nodes.get(to)
        if e is None or not e.alive:
            raise ValueError(f"no live node {to!r}")
        src = d.owner_of(unit)
        state = self.core.state
        if src == to:
            # Pin (or unpin) in place: the rebalancer leaves a pinned unit alone.
            if pin:
                state.moved_at[unit] = float("inf")
            else:
                state.moved_at.pop(unit, None)
            return self.core.moves_done
        if src is None:
            raise ValueError("unit has no owner to move from")
        busy = self.core.in_flight()
        if src in busy or to in busy:
            raise ValueError("a move involving these nodes is in flight")
        if pin:
            state.moved_at[unit] = float("inf")  # never moved by the rebalancer again
        done = await self._run_move(src, [Move(unit, src, to, 0.0)], "manual")
        if not done.committed:
            raise ValueError(f"move {done.outcome}")
        return self.core.moves_done

    async def drain_node(self, node: str) -> int:
        """Move everything off a live node (it may stop afterwards)."""
        d = self.dir
        e = d.nodes.get(node)
        if e is None or not e.alive:
            raise ValueError(f"no live node {node!r}")
        e.leaving = True
        targets = [n.id for n in d.live()]
        if not targets:
            e.leaving = False
            raise ValueError("no other node to drain to")
        units = d.units_owned_by(node)
        moves = [Move(u, node, targets[i % len(targets)], 0.0) for i, u in enumerate(units)]
        done = await self._run_move(node, moves, "drain")
        return len(moves) if done.committed else 0

    def status(self) -> dict[str, Any]:
        return self.core.status()

    @property
    def history(self) -> Any:
        return self.core.history
