"""The control loop: membership changes, planning, and the operator's actions.

Every ``tick_s`` the loop expires dead nodes (their units are spread at once),
gives unowned slots to live nodes, then asks the pure planner for moves and
hands them to the :class:`~gateway.controlplane.moves.MoveExecutor`, one batch
per source node. It is also the :class:`~gateway.controlplane.endpoint.ControlHandler`
for the backends' messages, and carries out admin actions (pause, manual move,
node drain) and the status view.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import Unit
from gateway.controlplane.directory import EmbeddedDirectory
from gateway.controlplane.endpoint import ControlEndpoint
from gateway.controlplane.moves import MoveExecutor, MoveHistory
from gateway.controlplane.planner import (
    Move,
    PlannerConfig,
    PlannerState,
    imbalance,
    plan,
)
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
        planner: PlannerConfig | None = None,
        rebalance: bool = True,
        tick_s: float = 0.5,
        move_timeout_s: float = 3.0,
        settle_s: float = 1.0,
        settle_after_move_s: float = 1.5,
        ewma_tau_s: float = 1.5,
    ):
        self.dir = directory
        self.metrics = metrics
        self.cfg = planner or PlannerConfig()
        self.state = PlannerState()
        self.paused = not rebalance
        self.tick_s = tick_s
        self.settle_s = settle_s
        self.endpoint = ControlEndpoint(secret, self)
        self.history = MoveHistory(directory)
        self.executor = MoveExecutor(
            directory,
            self.endpoint,
            self.history,
            move_timeout_s=move_timeout_s,
            settle_after_move_s=settle_after_move_s,
            ewma_tau_s=ewma_tau_s,
        )
        self.isolated: tuple[str, ...] = ()
        self._first_register: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._moves: set[asyncio.Task[bool]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.endpoint.close()

    def ready(self) -> bool:
        return bool(self.dir.live()) and None not in self.dir.table.owners

    def admission(self) -> int | None:
        """Retry-After (seconds) for new upgrades while the fleet sheds load, else None."""
        return 2 if self.state.shedding else None

    # ------------------------------------------------------------------ ControlHandler

    def registered(self, msg: cp.Register) -> None:
        self.dir.register(msg.node, msg.addr, msg.capacity)
        if self._first_register is None:
            self._first_register = time.monotonic()
        log.info("node_registered", node=msg.node, addr=msg.addr, capacity=msg.capacity)

    def table_message(self) -> cp.TableUpdate:
        return cp.TableUpdate(self.dir.table)

    async def received(self, node: str, msg: cp.Report | cp.Released | cp.Leave) -> None:
        match msg:
            case cp.Report(load):
                self.dir.renew(node, load)
            case cp.Released():
                self.executor.released(node, msg)
            case cp.Leave():
                await self._leave(node)

    async def _leave(self, node: str) -> None:
        """A node is stopping after flushing everything: reassign all it owns at once."""
        e = self.dir.nodes.get(node)
        if e is None:
            return
        e.leaving = True
        targets = [n.id for n in self.dir.live()]
        units = self.dir.units_owned_by(node)
        self.dir.spread(units, targets)
        await self.endpoint.broadcast(cp.TableUpdate(self.dir.table))
        self.history.record("leave", node, None, units, 0.0, "done")
        log.info("node_left", node=node, units=len(units))
        await self.endpoint.send(node, cp.Left())

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
            units = self.dir.units_owned_by(node)
            self.dir.spread(units, targets)
            self.history.record("dead", node, None, units, 0.0, "done")
            log.warning("node_dead", node=node, units=len(units), to=len(targets))
            changed = True
        if (
            self._first_register is not None
            and now - self._first_register >= self.settle_s
            and self.dir.assign_unowned()
        ):
            changed = True
        if changed:
            await self.endpoint.broadcast(cp.TableUpdate(self.dir.table))
        live = self.dir.live()
        loads = [self.executor.projected(n.to_load(), now) for n in live if n.load is not None]
        if len(loads) != len(live):
            return  # wait for every node's first report
        paused = {n.id for n in live} if self.paused else set()
        busy = frozenset(self.executor.in_flight | self.executor.settling(now) | paused)
        p = plan(loads, self.dir.table, self.state, now, self.cfg, busy)
        self.metrics.admission_closed.set(1 if p.shed else 0)
        self.isolated = p.isolated
        if not p.moves:
            return
        by_src: dict[str, list[Move]] = {}
        for mv in p.moves:
            by_src.setdefault(mv.src, []).append(mv)
        before = {n.node: round(n.util, 3) for n in loads}
        for src, mvs in by_src.items():
            self._spawn(self.executor.execute(src, mvs, p.reason, before))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[bool] = asyncio.get_running_loop().create_task(coro)
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

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
            return self.executor.moves_done
        if src is None:
            raise ValueError("unit has no owner to move from")
        if src in self.executor.in_flight or to in self.executor.in_flight:
            raise ValueError("a move involving these nodes is in flight")
        if pin:
            self.state.moved_at[unit] = float("inf")  # never moved by the rebalancer again
        ok = await self.executor.execute(src, [Move(unit, src, to, 0.0)], "manual")
        if not ok:
            raise ValueError("move aborted")
        return self.executor.moves_done

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
        units = self.dir.units_owned_by(node)
        moves = [Move(u, node, targets[i % len(targets)], 0.0) for i, u in enumerate(units)]
        ok = await self.executor.execute(node, moves, "drain")
        return len(moves) if ok else 0

    def status(self) -> dict[str, Any]:
        live = self.dir.live()
        loads = [n.to_load() for n in live if n.load is not None]
        nodes: dict[str, Any] = {}
        for n in self.dir.nodes.values():
            ld = n.load
            nodes[n.id] = {
                "rate": ld.rate if ld else 0.0,
                "capacity": n.capacity,
                "util": round(ld.rate / n.capacity, 4) if ld else 0.0,
                "pressure": ld.pressure if ld else False,
                "sessions": ld.sessions if ld else 0,
                "alive": n.alive,
                "slots": self.dir.table.owners.count(n.id),
            }
        return {
            "nodes": nodes,
            "imbalance": round(imbalance(loads), 4) if loads else None,
            "moves": self.executor.moves_done,
            "moved_load": round(self.executor.moved_load, 2),
            "moves_in_flight": len(self.executor.in_flight),
            "shedding": self.state.shedding,
            "paused": self.paused,
            "isolated": list(self.isolated),
            "overrides": len(self.dir.table.overrides),
        }
