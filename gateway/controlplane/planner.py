"""The rebalancer: node loads + slot table → moves. Pure: no I/O, the clock is an argument.

Rules, each a tested property:

* act at once on a node's ``pressure`` flag; on imbalance (max/mean utilization
  above 1 + tolerance) only every ``imbalance_period_s``, and only when the
  busiest node is above ``floor`` of its capacity (an idle fleet is never churned);
* move the hottest movable units (single hot keys, or slots) from the most to
  the least utilized nodes, each unit fitting the target's headroom below
  mean·(1 + tolerance), and only when the target ends no hotter than the source;
* anti-flapping: a cooldown per moved unit, a cap on moves and on moved load per
  round, nodes with a batch in flight are left alone;
* a key hotter than any node's headroom is not bounced: it is reported as
  isolated, and other units move off its node instead;
* when the fleet as a whole is above ``admission_high``, moving helps nobody:
  no moves, and the plan says to shed new connections.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from clientlib.kernel.routing import SlotTable, Unit

__all__ = [
    "Move",
    "NodeLoad",
    "Plan",
    "PlannerConfig",
    "PlannerState",
    "imbalance",
    "plan",
]


@dataclass(frozen=True, slots=True)
class NodeLoad:
    node: str
    capacity: float
    rate: float  # smoothed messages/s
    pressure: bool = False
    slots: dict[int, float] = field(default_factory=dict)
    hot_keys: tuple[tuple[str, int, float], ...] = ()

    @property
    def util(self) -> float:
        return self.rate / self.capacity


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    tolerance: float = 0.2
    floor: float = 0.3
    imbalance_period_s: float = 3.0
    cooldown_s: float = 30.0
    max_moves: int = 8
    max_moved_share: float = 0.5  # of the fleet's load, per round
    min_unit_rate: float = 0.5
    admission_high: float = 0.95
    admission_low: float = 0.85
    join_batch: int = 4096  # cold (load-free) slots handed to an under-filled node per round

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1 or not 0 <= self.floor < 1:
            raise ValueError("planner: need 0 < tolerance < 1 and 0 <= floor < 1")
        if not 0 < self.admission_low < self.admission_high:
            raise ValueError("planner: need 0 < admission_low < admission_high")
        if self.max_moves < 1 or self.cooldown_s < 0:
            raise ValueError("planner: max_moves >= 1, cooldown_s >= 0")


@dataclass(slots=True)
class PlannerState:
    """What the planner remembers between rounds (owned by the caller)."""

    moved_at: dict[Unit, float] = field(default_factory=dict)
    last_imbalance_round: float = float("-inf")
    shedding: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    unit: Unit
    src: str
    dst: str
    load: float


@dataclass(frozen=True, slots=True)
class Plan:
    moves: tuple[Move, ...] = ()
    reason: str = ""  # "pressure", "imbalance", "join" or "" (nothing to do)
    isolated: tuple[str, ...] = ()  # keys too hot for any node's headroom
    shed: bool = False  # admission control: refuse new connections
    imbalance: float = 1.0


def imbalance(loads: Iterable[NodeLoad]) -> float:
    """max/mean utilization (1.0 = perfectly even)."""
    ls = list(loads)
    cap = sum(n.capacity for n in ls)
    if not ls or cap <= 0:
        return 1.0
    mean = sum(n.rate for n in ls) / cap
    if mean <= 0:
        return 1.0
    return max(n.util for n in ls) / mean


def plan(
    loads: list[NodeLoad],
    table: SlotTable,
    state: PlannerState,
    now: float,
    cfg: PlannerConfig,
    busy: frozenset[str] = frozenset(),
) -> Plan:
    if not loads:
        return Plan()
    cap = sum(n.capacity for n in loads)
    total = sum(n.rate for n in loads)
    mean = total / cap
    imb = imbalance(loads)
    # Admission control, with hysteresis.
    if state.shedding and mean < cfg.admission_low:
        state.shedding = False
    elif not state.shedding and mean > cfg.admission_high:
        state.shedding = True
    if state.shedding:
        return Plan(reason="", shed=True, imbalance=imb)
    join = _join_moves(loads, table, cfg, busy, state, now)
    if len(loads) < 2 or total <= 0:
        return Plan(join, "join" if join else "", imbalance=imb)
    pressured = any(n.pressure and n.node not in busy for n in loads)
    peak = max(loads, key=lambda n: n.util)
    unbalanced = (
        imb > 1 + cfg.tolerance
        and peak.util > cfg.floor
        and now - state.last_imbalance_round >= cfg.imbalance_period_s
    )
    if not (pressured or unbalanced):
        return Plan(join, "join" if join else "", imbalance=imb)
    if unbalanced:
        state.last_imbalance_round = now
    moves, isolated = _load_moves(loads, table, state, now, cfg, busy, mean)
    for m in moves:
        state.moved_at[m.unit] = now
    reason = "pressure" if pressured else "imbalance"
    if not moves and join:
        return Plan(join, "join", tuple(isolated), imbalance=imb)
    return Plan(tuple(moves), reason if moves else "", tuple(isolated), imbalance=imb)


def _candidates(
    n: NodeLoad, table: SlotTable, state: PlannerState, now: float, cfg: PlannerConfig
) -> list[tuple[Unit, float]]:
    """Movable units on node ``n``, hottest first: its hot keys, then its slots' remainder."""
    cooling = {u for u, t in state.moved_at.items() if now - t < cfg.cooldown_s}
    out: list[tuple[Unit, float]] = []
    residual = dict(n.slots)
    for key, slot, rate in n.hot_keys:
        if slot in residual:
            residual[slot] -= rate
        if rate >= cfg.min_unit_rate and ("key", key) not in cooling:
            out.append((("key", key), rate))
    for slot, rate in residual.items():
        if (
            rate >= cfg.min_unit_rate
            and 0 <= slot < table.num_slots
            and table.owners[slot] == n.node
            and ("slot", slot) not in cooling
        ):
            out.append((("slot", slot), rate))
    out.sort(key=lambda x: -x[1])
    return out


def _load_moves(
    loads: list[NodeLoad],
    table: SlotTable,
    state: PlannerState,
    now: float,
    cfg: PlannerConfig,
    busy: frozenset[str],
    mean: float,
) -> tuple[list[Move], list[str]]:
    rate = {n.node: n.rate for n in loads}
    capa = {n.node: n.capacity for n in loads}
    limit = mean * (1 + cfg.tolerance)
    relief = mean * (1 + cfg.tolerance / 2)
    budget = cfg.max_moved_share * sum(rate.values())
    moves: list[Move] = []
    isolated: list[str] = []
    sources: set[str] = set()
    sinks: set[str] = set()
    done: set[str] = set(busy)
    by_node = {n.node: n for n in loads}
    while len(moves) < cfg.max_moves:
        src_pool = [
            n
            for n in by_node
            if n not in done
            and n not in sinks
            and (
                rate[n] / capa[n] > limit
                # A pressured node close to the mean is fleet-wide load, not a hotspot:
                # moving its units would only pass the pressure around.
                or (by_node[n].pressure and n not in sources and rate[n] / capa[n] > relief)
            )
        ]
        if not src_pool:
            break
        src = max(src_pool, key=lambda n: rate[n] / capa[n])
        picked = None
        for unit, r in _candidates(by_node[src], table, state, now, cfg):
            if any(m.unit == unit for m in moves):
                continue
            dsts = [n for n in by_node if n != src and n not in busy and n not in sources]
            if not dsts:
                break
            others = [n for n in by_node if n != src]
            if unit[0] == "key" and all((rate[d] + r) / capa[d] > limit for d in others):
                # Too hot for any node's headroom: moving it would only move the problem.
                if str(unit[1]) not in isolated:
                    isolated.append(str(unit[1]))
                continue
            if r > budget:
                continue
            dst = min(dsts, key=lambda n: rate[n] / capa[n])
            after = (rate[dst] + r) / capa[dst]
            # No overshoot: the target must end no hotter than the source. This is what
            # makes a unit never come back under steady load.
            if after <= limit and after <= (rate[src] - r) / capa[src]:
                picked = Move(unit, src, dst, r)
                break
        if picked is None:
            done.add(src)
            continue
        moves.append(picked)
        sources.add(src)
        sinks.add(picked.dst)
        rate[src] -= picked.load
        rate[picked.dst] += picked.load
        budget -= picked.load
    return moves, isolated


def _join_moves(
    loads: list[NodeLoad],
    table: SlotTable,
    cfg: PlannerConfig,
    busy: frozenset[str],
    state: PlannerState,
    now: float,
) -> tuple[Move, ...]:
    """Hand load-free slots to nodes holding well under their share of slots. A slot
    that just moved is not free: its new owner's reports may not show its load yet."""
    nodes = [n.node for n in loads]
    if len(nodes) < 2:
        return ()
    counts = {n: 0 for n in nodes}
    for owner in table.owners:
        if owner in counts:
            counts[owner] += 1
    share = table.num_slots / len(nodes)
    hungry = [n for n in nodes if counts[n] < share * 0.8 and n not in busy]
    if not hungry:
        return ()
    hot_slots = {s for n in loads for s, r in n.slots.items() if r > 0}
    hot_slots |= {
        int(u)
        for (kind, u), t in state.moved_at.items()
        if kind == "slot" and now - t < cfg.cooldown_s
    }
    moves: list[Move] = []
    for dst in hungry:
        want = min(int(share) - counts[dst], cfg.join_batch - len(moves))
        donors = sorted(
            (n for n in nodes if n != dst and n not in busy and n not in hungry),
            key=lambda n: -counts[n],
        )
        for src in donors:
            if want <= 0:
                break
            spare = counts[src] - int(share)
            for slot in table.slots_of(src):
                if spare <= 0 or want <= 0:
                    break
                if slot in hot_slots:
                    continue
                moves.append(Move(("slot", slot), src, dst, 0.0))
                counts[src] -= 1
                counts[dst] += 1
                spare -= 1
                want -= 1
    return tuple(moves)
