"""The control plane's logic, sans-I/O: membership, leases, moves, planning.

:class:`ControlCore` takes messages from nodes and the passage of time, and
returns :data:`Effect` values (send this to that node, broadcast the table,
close that session, a move finished). The asyncio shell
(:mod:`gateway.controlplane.controller`) carries them out over WebSockets; the
simulator carries them out over a simulated network. Every state change is
saved (durably) before the effects that announce it are returned.

A move, step by step (each step is durable or idempotent, and retried):

1. ``start_move``: a new epoch E and a :class:`MoveRecord` are saved; the
   source is sent ``Release(E, units → destinations)``, again every
   ``release_retry_s`` until it answers;
2. ``Released`` from the source (only the move's own source counts): the units
   are assigned to their destinations at E, the record removed, saved; the table
   is broadcast. That is the commit: the source closes the units' sessions with
   4000 when its table shows them gone.
3. No answer by ``move_timeout_s``, a failed flush, or a destination that died:
   abort. The units are given back to the source at a newer epoch E2 > E
   (saved, broadcast): its frozen sessions go on where they stopped.

A control plane that restarts mid-move loads the record and goes on from step 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import structlog

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import Unit
from gateway.controlplane.directory import EmbeddedDirectory
from gateway.controlplane.moves import HistoryEntry, MoveHistory, MoveRecord
from gateway.controlplane.planner import (
    Move,
    NodeLoad,
    PlannerConfig,
    PlannerState,
    imbalance,
    plan,
)

__all__ = [
    "Broadcast",
    "ControlCore",
    "CoreConfig",
    "Disconnect",
    "Effect",
    "MoveFinished",
    "Send",
]

log = structlog.get_logger("gateway.control")


@dataclass(frozen=True, slots=True)
class Send:
    node: str
    msg: cp.ControlMessage


@dataclass(frozen=True, slots=True)
class Broadcast:
    msg: cp.ControlMessage


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close a node's control session (it re-registers)."""

    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class MoveFinished:
    move: int
    committed: bool
    outcome: str


Effect: TypeAlias = Send | Broadcast | Disconnect | MoveFinished


@dataclass(frozen=True, slots=True)
class CoreConfig:
    rebalance: bool = True
    move_timeout_s: float = 3.0
    release_retry_s: float = 0.5
    settle_s: float = 1.0  # after the first registration, before unowned slots are assigned
    settle_after_move_s: float = 1.5  # nodes of a finished move are left alone this long
    ewma_tau_s: float = 1.5  # the nodes' load smoothing (for projecting arrivals)


class ControlCore:
    def __init__(
        self,
        directory: EmbeddedDirectory,
        config: CoreConfig | None = None,
        planner: PlannerConfig | None = None,
        *,
        wall: Callable[[], float] | None = None,
    ):
        self.dir = directory
        self.cfg = config or CoreConfig()
        self.planner_cfg = planner or PlannerConfig()
        self.state = PlannerState()
        self.paused = not self.cfg.rebalance
        self.history = MoveHistory()
        self.wall = wall or directory.clock
        self.isolated: tuple[str, ...] = ()
        self.shed = False
        self.moves_done = 0
        self.moved_load = 0.0
        self._first_register: float | None = None
        # Moved load not yet visible in the destination's smoothed rate: (time, node, load).
        self._arrivals: deque[tuple[float, str, float]] = deque(maxlen=1000)
        self._settle_until: dict[str, float] = {}
        now = directory.clock()
        for rec in directory.moves.values():  # moves a previous process left in flight
            self._arm(rec, now)

    # ------------------------------------------------------------------ nodes' messages

    def register(self, now: float, msg: cp.Register) -> tuple[bool, list[Effect]]:
        """A node (already authenticated as ``msg.node``) registers. (accepted, effects);
        a refused registration is answered ``Refused`` by the caller."""
        d = self.dir
        other = d.holder_elsewhere(msg.node, msg.incarnation)
        if other is not None:
            return False, []
        d.observe_epoch(max([msg.max_epoch, *msg.keys.values(), 0]))
        d.register(msg.node, msg.addr, msg.capacity, msg.incarnation)
        d.save()
        if self._first_register is None:
            self._first_register = now
        log.info("node_registered", node=msg.node, addr=msg.addr, capacity=msg.capacity)
        out: list[Effect] = [
            Send(msg.node, cp.TableUpdate(d.table)),
            Send(msg.node, cp.Granted(0, int(d.lease_s * 1000))),
        ]
        for rec in d.moves.values():
            if rec.src == msg.node:
                rec.next_send = now  # the release may not have reached the last session
        return True, out

    def refusal(self, msg: cp.Register) -> str:
        return (
            f"node id {msg.node!r} is held by another process; "
            "retry when its lease runs out (two backends with one --node-id?)"
        )

    def received(
        self, now: float, node: str, msg: cp.Report | cp.Released | cp.Leave
    ) -> list[Effect]:
        d = self.dir
        e = d.nodes.get(node)
        if e is None or not e.alive:
            # A node the plane declared dead (it stalled past its lease): it must
            # register again, fresh, and will be given work like a new node.
            return [
                Send(node, cp.Refused("lease expired: register again")),
                Disconnect(node, "dead"),
            ]
        match msg:
            case cp.Report(seq, load, version):
                d.renew(node, load)
                out: list[Effect] = [Send(node, cp.Granted(seq, int(d.lease_s * 1000)))]
                if version != d.table.version:
                    out.append(Send(node, cp.TableUpdate(d.table)))
                return out
            case cp.Released():
                return self._released(now, node, msg)
            case cp.Leave():
                return self._leave(now, node)
        return []

    def _released(self, now: float, node: str, msg: cp.Released) -> list[Effect]:
        rec = self.dir.moves.get(msg.move)
        if rec is None:
            return []  # late (already finished) or unknown: nothing to do
        if rec.src != node:
            log.warning("released_from_wrong_node", move=msg.move, node=node, src=rec.src)
            return []
        if msg.error:
            return self._abort(now, rec, f"aborted: flush failed ({msg.error[:80]})")
        dead = [dst for _, dst in rec.targets if not self._alive(dst)]
        if dead:
            return self._abort(now, rec, f"aborted: destination {dead[0]} gone")
        return self._commit(now, rec)

    def _leave(self, now: float, node: str) -> list[Effect]:
        """A node is stopping after writing everything: reassign all it owns at once."""
        d = self.dir
        e = d.nodes[node]
        e.leaving = True
        out = self._abort_moves_of(now, node, "aborted: node left")
        units = d.units_owned_by(node)
        d.spread(units, [n.id for n in d.live()])
        self._cool(units, now)
        self._history("leave", node, None, units, 0.0, "done", now)
        log.info("node_left", node=node, units=len(units))
        # Gone: its lease ends now, so the process that replaces it registers at once.
        e.alive, e.load = False, None
        d.save()
        return [*out, Broadcast(cp.TableUpdate(d.table)), Send(node, cp.Left())]

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> list[Effect]:
        d = self.dir
        out: list[Effect] = []
        changed = False
        for node in d.expire():
            out += self._abort_moves_of(now, node, "aborted: node dead")
            units = d.units_owned_by(node)
            d.spread(units, [n.id for n in d.live()])
            self._cool(units, now)
            self._history("dead", node, None, units, 0.0, "done", now)
            log.warning("node_dead", node=node, units=len(units))
            out.append(Disconnect(node, "lease expired"))
            changed = True
        if self._first_register is not None and now - self._first_register >= self.cfg.settle_s:
            if d.assign_unowned():
                changed = True
            orphans = d.orphaned()
            live = [n.id for n in d.live()]
            if orphans and live:
                # Their owner died or left when nobody could take them: they would wait
                # for that very node to come back (maybe never).
                d.spread(orphans, live)
                self._cool(orphans, now)
                self._history("orphans", "", None, orphans, 0.0, "done", now)
                log.warning("orphans_reassigned", units=len(orphans))
                changed = True
        if changed:
            out.append(Broadcast(cp.TableUpdate(d.table)))
        for rec in list(d.moves.values()):
            if now >= rec.deadline:
                out += self._abort(now, rec, "aborted: timeout")
            elif now >= rec.next_send:
                rec.next_send = now + self.cfg.release_retry_s
                # The table first: a source that missed it ignores the release.
                out.append(Send(rec.src, cp.TableUpdate(d.table)))
                out.append(Send(rec.src, self._release_order(rec)))
        out += self._plan(now)
        return out

    def _plan(self, now: float) -> list[Effect]:
        d = self.dir
        live = d.live()
        loads = [self.projected(n.to_load(), now) for n in live if n.load is not None]
        if len(loads) != len(live):
            return []  # wait for every node's first report
        settling = {n for n, until in self._settle_until.items() if until > now}
        paused = {n.id for n in live} if self.paused else set()
        busy = frozenset(self.in_flight() | settling | paused)
        p = plan(loads, d.table, self.state, now, self.planner_cfg, busy)
        self.shed = p.shed
        self.isolated = p.isolated
        if not p.moves:
            return []
        by_src: dict[str, list[Move]] = {}
        for mv in p.moves:
            by_src.setdefault(mv.src, []).append(mv)
        before = {n.node: round(n.util, 3) for n in loads}
        out: list[Effect] = []
        for src, mvs in by_src.items():
            out += self.start_move(now, src, mvs, p.reason, before)[1]
        return out

    def projected(self, load: NodeLoad, now: float) -> NodeLoad:
        """A node's load as its smoothed rate will show it once recent arrivals settle.

        The backend's EWMA (time constant ``ewma_tau_s``) shows a key that just
        arrived at only a fraction of its rate; without this the planner would
        see room that is already taken and over-move.
        """
        tau = self.cfg.ewma_tau_s
        extra = sum(
            ld * math.exp(-(now - t) / tau) for t, n, ld in self._arrivals if n == load.node
        )
        return dataclasses.replace(load, rate=load.rate + extra) if extra > 0.01 else load

    # ------------------------------------------------------------------ moves

    def in_flight(self) -> set[str]:
        return {n for rec in self.dir.moves.values() for n in rec.nodes}

    def start_move(
        self,
        now: float,
        src: str,
        moves: list[Move],
        reason: str,
        before: dict[str, float] | None = None,
    ) -> tuple[int, list[Effect]]:
        d = self.dir
        rec = MoveRecord(
            d.next_move_id(),
            src,
            d.next_epoch(),
            tuple((m.unit, m.dst) for m in moves),
            reason,
            sum(m.load for m in moves),
            before or {},
        )
        self._arm(rec, now)
        d.moves[rec.id] = rec
        d.save()  # the epoch and the record, before the release goes out
        rec.next_send = now + self.cfg.release_retry_s
        return rec.id, [Send(src, self._release_order(rec))]

    def _release_order(self, rec: MoveRecord) -> cp.Release:
        return cp.Release(rec.id, rec.epoch, rec.targets, self.dir.table.version)

    def _arm(self, rec: MoveRecord, now: float) -> None:
        rec.started = now
        rec.deadline = now + self.cfg.move_timeout_s
        rec.next_send = now

    def _commit(self, now: float, rec: MoveRecord) -> list[Effect]:
        d = self.dir
        moved = 0
        for unit, dst in rec.targets:
            if d.owner_of(unit) == rec.src:  # still the source's (not spread after a death)
                d.assign(unit, dst, rec.epoch)
                moved += 1
        del d.moves[rec.id]
        d.save()
        for unit, dst in rec.targets:
            load = self._unit_load(rec, unit)
            self._arrivals.append((now, dst, load))
        for n in rec.nodes:  # let fresh reports reflect the move before the next one
            self._settle_until[n] = now + self.cfg.settle_after_move_s
        self.moves_done += len(rec.targets)
        self.moved_load += rec.load
        dsts = sorted({dst for _, dst in rec.targets})
        self._history(
            rec.reason,
            rec.src,
            ",".join(dsts),
            [u for u, _ in rec.targets],
            rec.load,
            "done",
            now,
            rec,
        )
        log.info(
            "moved",
            move=rec.id,
            reason=rec.reason,
            src=rec.src,
            dst=dsts,
            units=len(rec.targets),
            load=round(rec.load, 1),
            epoch=rec.epoch,
        )
        return [Broadcast(cp.TableUpdate(d.table)), MoveFinished(rec.id, True, "done")]

    def _abort(self, now: float, rec: MoveRecord, outcome: str) -> list[Effect]:
        """Give the units back to the source at a newer epoch (its flush used rec.epoch)."""
        d = self.dir
        epoch = d.next_epoch()
        for unit, _ in rec.targets:
            if d.owner_of(unit) == rec.src:
                d.assign(unit, rec.src, epoch)
        del d.moves[rec.id]
        d.save()
        self._history(
            rec.reason, rec.src, None, [u for u, _ in rec.targets], rec.load, outcome, now, rec
        )
        log.warning("move_aborted", move=rec.id, src=rec.src, outcome=outcome)
        return [Broadcast(cp.TableUpdate(d.table)), MoveFinished(rec.id, False, outcome)]

    def _abort_moves_of(self, now: float, node: str, outcome: str) -> list[Effect]:
        out: list[Effect] = []
        for rec in list(self.dir.moves.values()):
            if node in rec.nodes:
                out += self._abort(now, rec, outcome)
        return out

    def _cool(self, units: list[Unit], now: float) -> None:
        """Units just reassigned are left where they landed for a cooldown: their new
        owner's reports do not show their load yet, so they look free to move."""
        for u in units:
            self.state.moved_at.setdefault(u, now)
            if self.state.moved_at[u] < now:
                self.state.moved_at[u] = now

    def _unit_load(self, rec: MoveRecord, unit: Unit) -> float:
        return rec.load / max(len(rec.targets), 1)

    def _alive(self, node: str) -> bool:
        e = self.dir.nodes.get(node)
        return e is not None and e.alive

    def _history(
        self,
        reason: str,
        src: str,
        dst: str | None,
        units: list[Unit],
        load: float,
        outcome: str,
        now: float,
        rec: MoveRecord | None = None,
    ) -> None:
        self.history.add(
            HistoryEntry(
                at=self.wall(),
                reason=reason,
                src=src,
                dst=dst,
                units=tuple(units),
                load=load,
                outcome=outcome,
                utilization_before=rec.before if rec else {},
                utilization_after={
                    n.id: round(n.to_load().util, 3) for n in self.dir.live() if n.load
                },
                duration_ms=round((now - rec.started) * 1000, 1) if rec else None,
                epoch=rec.epoch if rec else None,
            )
        )

    # ------------------------------------------------------------------ views

    def unsplittable(self, loads: list[NodeLoad]) -> list[dict[str, Any]]:
        """The keys the last plan isolated, with the node carrying each and its rate against
        the fair share it exceeds (mean utilization times the biggest node's capacity)."""
        if not self.isolated or not loads:
            return []
        cap = sum(n.capacity for n in loads)
        fair = sum(n.rate for n in loads) / cap * max(n.capacity for n in loads) if cap else 0.0
        where: dict[str, tuple[str, float]] = {}
        for n in loads:
            for key, _, rate in n.hot_keys:
                if key in self.isolated and rate > where.get(key, ("", -1.0))[1]:
                    where[key] = (n.node, rate)
        return [
            {
                "key": k,
                "node": where.get(k, ("", 0.0))[0],
                "rate": round(where.get(k, ("", 0.0))[1], 1),
                "fair_share": round(fair, 1),
            }
            for k in self.isolated
        ]

    def ready(self) -> bool:
        return bool(self.dir.live()) and None not in self.dir.table.owners

    def status(self) -> dict[str, Any]:
        d = self.dir
        live = d.live()
        loads = [n.to_load() for n in live if n.load is not None]
        nodes: dict[str, Any] = {}
        for n in d.nodes.values():
            ld = n.load
            nodes[n.id] = {
                "rate": ld.rate if ld else 0.0,
                "capacity": round(ld.capacity, 1) if ld else n.capacity,
                "util": round(ld.rate / ld.capacity, 4) if ld else 0.0,
                "pressure": ld.pressure if ld else False,
                "score": round(ld.score, 3) if ld else 0.0,
                "delay_ms": round(ld.delay_ms, 2) if ld else 0.0,
                "sessions": ld.sessions if ld else 0,
                "alive": n.alive,
                "slots": d.table.owners.count(n.id),
            }
        return {
            "nodes": nodes,
            "imbalance": round(imbalance(loads), 4) if loads else None,
            "moves": self.moves_done,
            "moved_load": round(self.moved_load, 2),
            "moves_in_flight": len(d.moves),
            "shedding": self.state.shedding,
            "paused": self.paused,
            "isolated": list(self.isolated),
            "unsplittable": self.unsplittable(loads),
            "overrides": len(d.table.overrides),
            "epoch": d.epoch,
            "table_version": d.table.version,
        }
