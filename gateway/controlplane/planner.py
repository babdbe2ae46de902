"""The rebalancer: node loads + slot table → moves. Pure: no I/O, the clock is an argument.

Rules, each a tested property (``tests/gateway/test_rebalancer.py``, and in a closed
loop with a simulated fleet, ``tests/gateway/test_planner_closed_loop.py``):

* act at once on a node's ``pressure`` flag (when it is clearly above the mean); on
  imbalance (max/mean utilization above 1 + tolerance) every ``imbalance_period_s``
  at most, and only when the busiest node is above ``floor`` (an idle fleet is never
  churned); never while a round's moves are in flight or settling, and not while
  reports are still rising (for ``2·imbalance_period_s`` at most);
* a round is planned as a whole: every node ends under its line, mean·(1 + tolerance)
  of its capacity, with the least moved load the packing finds (see ``_Draft``);
* a key hotter than every node's fair share is reported as ``isolated`` and gets a
  node of its own: the units beside it move off, nothing moves onto it;
* anti-flapping: a cooldown per moved unit, caps on moves and on moved load per round,
  receivers filled to a margin under their line, a dead band of 1 % of the mean;
* when the fleet as a whole is above ``admission_high``, moving helps nobody: no
  moves, and the plan says to shed new connections.
"""

from __future__ import annotations

import copy
from collections import Counter
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
    # A round moves what it must (every node sheds to its line); these caps only slow
    # it down. 4096: a round may move every slot once; 1.0: a key carrying more than
    # half the traffic may still leave a node too small for it.
    max_moves: int = 4096
    max_moved_share: float = 1.0  # of the fleet's load, per round
    min_unit_rate: float = 0.5
    admission_high: float = 0.95
    admission_low: float = 0.85
    join_batch: int = 4096  # cold (load-free) slots handed to an under-filled node per round
    # A slot that moved this recently is not known to be cold: its new owner's reports
    # may not show its load yet (its clients are still reconnecting).
    join_settle_s: float = 5.0
    steady_s: float = 1.0  # a report that rose within steady_s is still filling in

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
    seen: dict[str, float] = field(default_factory=dict)  # node → rate at the last call
    rising_at: float = float("-inf")  # when a node's rate last rose beyond a quarter band
    waiting_since: float | None = None  # a round held back since, while reports rose
    idle_at: float = float("-inf")  # the last round that found nothing to move


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
    isolated: tuple[str, ...] = ()  # keys hotter than every node's fair share
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
    imb = imbalance(loads)
    mean = sum(n.rate for n in loads) / sum(n.capacity for n in loads)
    # Admission control, with hysteresis.
    if state.shedding and mean < cfg.admission_low:
        state.shedding = False
    elif not state.shedding and mean > cfg.admission_high:
        state.shedding = True
    if state.shedding:
        return Plan(reason="", shed=True, imbalance=imb)
    state.moved_at = {u: t for u, t in state.moved_at.items() if now - t < cfg.cooldown_s}
    isolated = _isolated(loads, mean) if mean > 0 else []
    reason = _trigger(loads, state, now, cfg, busy, mean, imb)
    moves: tuple[Move, ...] = ()
    if reason:
        draft = _Draft(loads, table, state, cfg, mean)
        moves = draft.solve(isolated)
        for it in draft.committed:  # keys that rode in a moved slot moved with it
            for u in [it.unit] + [("key", k) for k in it.riders]:
                state.moved_at[u] = now
        state.idle_at = state.idle_at if moves else now
    if not moves:
        moves = _join_moves(loads, table, state, cfg, busy, now)
        reason = "join" if moves else ""
        state.moved_at.update(dict.fromkeys((m.unit for m in moves), now))
    return Plan(moves, reason, tuple(k for k, _, _ in isolated), imbalance=imb)


def _trigger(
    loads: list[NodeLoad],
    state: PlannerState,
    now: float,
    cfg: PlannerConfig,
    busy: frozenset[str],
    mean: float,
    imb: float,
) -> str:
    """Why load moves are planned now ("pressure" or "imbalance"), or "" if not."""
    # Reports are averages (EWMA, tau 1.5 s): a hotspot that just started shows at a
    # fraction of its rate, with about its last step still to come. A round planned on
    # that view moves too little, to the wrong places; a rise within a quarter band is
    # what receivers' margin absorbs. Busy nodes' views change on purpose.
    for n in loads:
        # A quarter band, above what the counts' own noise moves an average (about
        # the square root of a second's count: Poisson).
        band = cfg.tolerance / 4 * mean * n.capacity + n.rate**0.5
        if n.node not in busy and n.rate - state.seen.get(n.node, n.rate) > band:
            state.rising_at = now
        state.seen[n.node] = n.rate
    # While a round's moves are in flight or settling, the view of their nodes (hence
    # the mean) is off by what has not shown yet: the next round waits for it.
    if len(loads) < 2 or mean <= 0 or any(n.node in busy for n in loads):
        return ""
    # A pressured node close to the mean is fleet-wide load, not a hotspot: moving its
    # units would only pass the pressure around (admission control handles that).
    relief = mean * (1 + cfg.tolerance / 2)
    pressured = any(n.pressure and n.util > relief for n in loads)
    unbalanced = imb > 1 + cfg.tolerance and max(n.util for n in loads) > cfg.floor
    # Imbalance is acted on once per period; pressure at once, unless the last round
    # found nothing to move (then it waits a period too).
    pressured = pressured and now - state.idle_at >= cfg.imbalance_period_s
    unbalanced = unbalanced and now - state.last_imbalance_round >= cfg.imbalance_period_s
    if not (pressured or unbalanced):
        state.waiting_since = None
        return ""
    if now - state.rising_at < cfg.steady_s:  # still filling in: wait, though not for ever
        state.waiting_since = now if state.waiting_since is None else state.waiting_since
        if now - state.waiting_since < 2 * cfg.imbalance_period_s:
            return ""
    state.waiting_since = None
    if unbalanced:
        state.last_imbalance_round = now
    return "pressure" if pressured else "imbalance"


def _isolated(loads: list[NodeLoad], mean: float) -> list[tuple[str, str, float]]:
    """Keys hotter than the fair share of the biggest node, hottest first: (key, node, rate).

    Such a key makes any node it shares hotter than the mean, whatever else moves.
    """
    fair = mean * max(n.capacity for n in loads)
    seen: dict[str, tuple[str, str, float]] = {}
    for n in loads:
        for key, _, rate in n.hot_keys:
            if rate > fair and rate > seen.get(key, ("", "", 0.0))[2]:
                seen[key] = (key, n.node, rate)
    return sorted(seen.values(), key=lambda x: -x[2])


@dataclass(frozen=True, slots=True)
class _Item:
    """A movable unit as the planner sees it."""

    unit: Unit
    load: float
    slot: int = -1  # a key without an override rides in this slot: moving the slot takes it
    riders: tuple[str, ...] = ()  # a slot's reported keys without an override


def _items(n: NodeLoad, table: SlotTable, state: PlannerState, cfg: PlannerConfig) -> list[_Item]:
    """Movable units on node ``n``, hottest first (a key before a slot of the same load).
    A slot's load is what moving it takes along: its remainder and its riders."""
    out, residual = [], dict(n.slots)
    riders: dict[int, list[tuple[str, float]]] = {}
    owned = {s for s in n.slots if 0 <= s < table.num_slots and table.owners[s] == n.node}
    for key, slot, rate in n.hot_keys:
        residual[slot] = residual.get(slot, 0.0) - rate
        rides = slot in owned and key not in table.overrides
        riders.setdefault(slot, []).extend([(key, rate)] if rides else [])
        if rate >= cfg.min_unit_rate and ("key", key) not in state.moved_at:
            out.append(_Item(("key", key), rate, slot if rides else -1))
    for slot in owned - {int(u[1]) for u in state.moved_at if u[0] == "slot"}:
        ks = riders.get(slot, [])
        load = residual[slot] + sum(r for _, r in ks)
        if load >= cfg.min_unit_rate:
            out.append(_Item(("slot", slot), load, riders=tuple(k for k, _ in ks)))
    return sorted(out, key=lambda it: (-it.load, it.unit[0] == "slot"))


_EPS = 1e-9


class _Draft:
    """One round's moves, built on planned loads.

    Every node over its line sheds down to it, nodes whose excess needs a unit bigger
    than it first and the biggest such unit first (they need the few big gaps, as in
    LPT bin packing). A node sheds with the least moved load: one unit that does it,
    else its units hottest first, each no more than what is still to go, else the
    smallest bigger unit (both ways tried on trial drafts). A unit goes to the node
    where it ends least utilized, filled to a quarter band under its line (what just
    arrived shows late in reports, and a receiver perched on its line would be the
    next source), or to a node that first moves some of its own units on, for no more
    than the unit itself. Units of a node given to an isolated key move off last.
    Where that leaves load over a line, an LPT repacking of every movable unit (each
    stays where it still fits) is the fallback, kept if it ends lower.
    """

    def __init__(self, loads: list[NodeLoad], table: SlotTable, state: PlannerState,
                 cfg: PlannerConfig, mean: float) -> None:  # fmt: skip
        self.cfg, self.mean = cfg, mean
        self.cap = {n.node: n.capacity for n in loads}
        self.load = {n.node: n.rate for n in loads}
        self.line = {n: mean * (1 + cfg.tolerance) * c for n, c in self.cap.items()}
        self.fill = {n: self.line[n] - cfg.tolerance / 4 * mean * c for n, c in self.cap.items()}
        self.items = {n.node: _items(n, table, state, cfg) for n in loads}
        self.rate = {k: r for n in loads for k, _, r in n.hot_keys}
        self.closed: set[str] = set()  # given to an isolated key: receives nothing
        self.moves: list[Move] = []
        self.committed: list[_Item] = []
        self.taken: set[Unit] = set()
        self.carved: dict[Unit, float] = {}  # load a slot lost to its keys moved alone
        self.budget = cfg.max_moved_share * sum(self.load.values())
        self.floor = 0.0  # the utilization isolated keys set, alone on their nodes
        self.fixed = {n: self.load[n] - self.movable(n) for n in self.load}  # stays put

    def fork(self) -> _Draft:
        d = copy.copy(self)
        d.load, d.closed, d.moves = dict(self.load), set(self.closed), list(self.moves)
        d.committed, d.taken, d.carved = list(self.committed), set(self.taken), dict(self.carved)
        return d

    def adopt(self, d: _Draft) -> None:
        vars(self).update(vars(d))

    def eff(self, it: _Item) -> float:
        """What moving ``it`` now takes along (0 once it, or the slot it rides in, moved)."""
        if it.unit in self.taken or ("slot", it.slot) in self.taken:
            return 0.0
        return it.load - self.carved.get(it.unit, 0.0)

    def live(self, n: str) -> list[tuple[_Item, float]]:
        return [(it, e) for it in self.items[n] if (e := self.eff(it)) > _EPS]

    def movable(self, n: str, key: str | None = None) -> float:
        """What could move off ``n``; with ``key``, only the unit that carries that key."""
        return sum(
            e for it, e in self.live(n) if it.slot < 0 and (key is None or _carries(it, key))
        )

    def over(self, n: str) -> bool:
        """Above its line by more than the reports' precision (1 % of the mean): moving
        load for less is churn chasing the averages' last digits."""
        return self.load[n] > self.line[n] + 0.01 * self.mean * self.cap[n]

    def solve(self, isolated: list[tuple[str, str, float]]) -> tuple[Move, ...]:
        # The level isolated keys set together: hottest on the biggest node, and so on.
        big = sorted(self.cap, key=lambda n: -self.cap[n])
        pairs = zip(isolated, big, strict=False)
        self.floor = max(((self.fixed[n] + r) / self.cap[n] for (_, _, r), n in pairs), default=0)
        homes = [h for key, node, rate in isolated if (h := self.isolate(key, node, rate))]
        base = self.fork()
        over = [n for n in self.load if n not in self.closed and self.over(n)]
        for n in sorted(over, key=self.urgency):
            self.shed(n, self.line[n], 1, 0.01 * self.mean * self.cap[n])
        for home, key in homes:
            for it, _ in self.live(home):
                if not _carries(it, key):
                    self.place(it, home, 1)
        if self.left(homes) > _EPS:
            moved = sum(m.load for m in self.moves)
            rest = [self.load[n] - self.line[n] for n in self.load if n not in self.closed]
            need = sum(self.whole(n, r) for n, r in zip(self.load, rest, strict=False) if r > 0)
            base.repack(homes)
            # Worth its churn if it meets the lines where packing did not, for no more than
            # twice what still had to go; or if it ends over a quarter band (5 %) lower.
            line = 1 + self.cfg.tolerance
            cheap = sum(m.load for m in base.moves) <= moved + 2 * need
            lower = max(base.reached(), line) * (1 + self.cfg.tolerance / 4)
            if (base.left(homes) <= _EPS and cheap) or lower < max(self.reached(), line):
                self.adopt(base)
        return tuple(self.moves)

    def urgency(self, n: str) -> tuple[bool, float, float]:
        need, live = self.load[n] - self.line[n], self.live(n)
        small = self.small(live, need)
        bigger = min((e for _, e in live if e > need), default=0.0)
        return small >= need, 0.0 if small >= need else -bigger, -self.load[n] / self.cap[n]

    def left(self, homes: list[tuple[str, str]]) -> float:
        """Load still over a line, or beside an isolated key."""
        over = sum(
            self.load[n] - self.line[n] for n in self.load if n not in self.closed and self.over(n)
        )
        return over + sum(self.load[h] - self.fixed[h] - self.rate[key] for h, key in homes)

    def reached(self) -> float:
        """max/mean utilization."""
        return max(self.load[n] / self.cap[n] for n in self.load) / self.mean

    def isolate(self, key: str, node: str, rate: float) -> tuple[str, str] | None:
        """Give ``key`` a node of its own; the key moves there now. Returns (home, key)."""
        item = next((it for it in self.items[node] if it.unit == ("key", key)), None)
        home = self.home(key, node, rate) if item is not None else node
        if home is None or (home == node and node in self.closed):
            return None
        if home != node:
            if item is None or not self.can_move(rate):
                return None
            self.commit(item, node, home)
        self.closed.add(home)
        self.floor = max(self.floor, (self.fixed[home] + rate) / self.cap[home])
        return home, key

    def home(self, key: str, node: str, rate: float) -> str | None:
        """Where it ends least hot, or anywhere under the line or the level isolated keys
        set anyway; it moves (all its sessions) only to win more than an eighth of the
        band (2.5 %), and among the candidates goes where the least load has to move."""
        free = [n for n in self.load if n not in self.closed]
        kept = self.movable(node, key)

        def alone(n: str) -> float:  # the node's utilization once only the key is left on it
            return (self.fixed[n] + (kept if n == node else rate)) / self.cap[n]

        def cost(n: str) -> float:  # the rest off its node, or the key and all of a node
            return self.movable(node) - kept if n == node else rate + self.movable(n)

        best = max(min((alone(n) for n in free), default=0.0), self.floor)
        level = max(best * (1 + self.cfg.tolerance / 8), self.mean * (1 + self.cfg.tolerance))
        fits = [n for n in free if alone(n) <= level + _EPS]
        return min(fits, key=lambda n: (cost(n), alone(n)), default=None)

    def shed(self, src: str, target: float, depth: int, slack: float = 0.0) -> bool:
        """Move units off ``src`` down to ``target`` (``slack`` short of it will do): small
        units only, or the smallest bigger unit (a few by a chain) then small ones. Both
        are tried; kept: done with the least moved load, or else the lowest."""
        need = self.load[src] - target
        if need <= _EPS:
            return True
        live, whole = self.live(src), self.whole(src, need)
        base, tries = len(self.moves), []
        for small in (True, False):
            d = self.fork()
            big = [it for it, e in reversed(live) if e > need]
            placed = small or any(
                d.place(it, src, depth if i < 3 else 0) for i, it in enumerate(big)
            )
            ok = placed and d.shed_small(src, target, depth, slack)
            moved = sum(m.load for m in d.moves[base:])
            if moved <= 2 * whole + _EPS:
                tries.append((not ok, moved if ok else d.load[src], len(d.moves), d))
        if not tries:
            return False
        best = min(tries, key=lambda t: t[:3])
        self.adopt(best[3])
        return not best[0]

    def whole(self, n: str, need: float) -> float:
        """What has to go off ``n`` in whole units: ``need``, or the smallest unit that
        covers it when the smaller ones cannot add up to it. No shed moves over twice it."""
        live = self.live(n)
        bigger = [e for _, e in live if e > need]
        return need if self.small(live, need) >= need or not bigger else min(bigger)

    @staticmethod
    def small(live: list[tuple[_Item, float]], need: float) -> float:
        """What the units of at most ``need`` add up to (a key and its slot counted once)."""
        big_slots = {it.unit[1] for it, e in live if it.unit[0] == "slot" and e > need}
        return sum(e for it, e in live if e <= need and (it.slot < 0 or it.slot in big_slots))

    def shed_small(self, src: str, target: float, depth: int, slack: float) -> bool:
        band = self.cfg.tolerance * self.mean * self.cap[src]
        while (need := self.load[src] - target) > _EPS:
            live = self.live(src)
            bigger = [(it, e) for it, e in reversed(live) if need <= e <= need + band]
            # One unit that does it with no more than twice the excess moved: one move.
            moved = next((e for it, e in bigger if e <= 2 * need and self.place(it, src, 0)), 0.0)
            for it, _ in live if moved <= 0 else []:  # hottest first, none over what is left
                e = self.eff(it)
                if 0 < e <= need - moved + _EPS:
                    if self.place(it, src, depth):
                        moved += e
                    depth = 0  # a chain for the biggest only; the smaller take what is left
            if moved <= 0:  # less is left than any unit: the smallest that covers it
                moved = next((e for it, e in bigger if self.place(it, src, 0)), 0.0)
            if moved <= 0:
                break
        return self.load[src] - target <= slack

    def place(self, it: _Item, src: str, depth: int) -> bool:
        """To the node where ``it`` ends least utilized, under its fill; with ``depth``, to
        one that first moves some of its own units on, for no more load than ``it``."""
        e = self.eff(it)
        if e <= 0 or not self.can_move(e):
            return False
        self.load[src] -= e  # gone while we look, so a chain of moves may end on src
        free = [n for n in self.load if n not in self.closed and n != src]
        fit = [n for n in free if self.load[n] + e <= self.fill[n] + _EPS]
        dst = min(fit, key=lambda n: (self.load[n] + e) / self.cap[n], default=None)
        room = [n for n in free if self.fill[n] - self.fixed[n] >= e] if depth else []
        for n in sorted(room, key=lambda n: self.load[n] - self.fill[n])[:3] if not dst else []:
            trial = self.fork()
            trial.closed.add(n)  # nothing moved off n comes back to it
            done = trial.shed(n, self.fill[n] - e, depth - 1) and trial.can_move(e)
            if done and sum(m.load for m in trial.moves[len(self.moves) :]) <= e:
                trial.closed.discard(n)
                self.adopt(trial)
                dst = n
                break
        self.load[src] += e
        if dst is not None:
            self.commit(it, src, dst)
        return dst is not None

    def repack(self, homes: list[tuple[str, str]]) -> None:
        """LPT over every movable unit, hottest first: each stays where it is if it still
        fits under that node's line, else goes where it ends least utilized."""
        own, units = dict(homes), []
        planned = {n: self.load[n] - self.movable(n) for n in self.load}  # keys moved in stay
        for n in self.load:
            for it, e in self.live(n):
                if it.slot < 0 and n in own and _carries(it, own[n]):
                    planned[n] += e  # the isolated key stays on its node
                elif it.slot < 0:
                    units.append((e, n, it))
        for e, home, it in sorted(units, key=lambda u: -u[0]):
            dst = home
            if home in own or planned[home] + e > self.line[home] + _EPS:
                others = [n for n in self.load if n not in own and n != home]
                roomy = [n for n in others if planned[n] + e <= self.fill[n] + _EPS]
                dst = min(roomy or others or [home], key=lambda n: (planned[n] + e) / self.cap[n])
            if dst != home and self.can_move(e):
                self.commit(it, home, dst)
            else:
                dst = home
            planned[dst] += e

    def can_move(self, e: float) -> bool:
        return len(self.moves) < self.cfg.max_moves and e <= self.budget + _EPS

    def commit(self, it: _Item, src: str, dst: str) -> None:
        e = self.eff(it)
        self.moves.append(Move(it.unit, src, dst, e))
        self.committed.append(it)
        self.taken.add(it.unit)
        if it.slot >= 0:  # a key moved alone leaves its slot lighter
            self.carved[("slot", it.slot)] = self.carved.get(("slot", it.slot), 0.0) + e
        self.load[src] -= e
        self.load[dst] += e
        self.budget -= e


def _carries(it: _Item, key: str) -> bool:
    return it.unit == ("key", key) or key in it.riders


def _join_moves(
    loads: list[NodeLoad],
    table: SlotTable,
    state: PlannerState,
    cfg: PlannerConfig,
    busy: frozenset[str],
    now: float,
) -> tuple[Move, ...]:
    """Hand load-free slots to nodes holding well under their share of slots (in proportion
    to their capacities). A load-free slot carries no sessions, so the cooldown of loaded
    units does not apply to it."""
    by_node = {n.node: n for n in loads}
    held = Counter(table.owners)
    counts = {n: held[n] for n in by_node}
    total_cap = sum(n.capacity for n in loads)
    quota = {n.node: int(table.num_slots * n.capacity / total_cap) for n in loads}
    hungry = [n for n in counts if counts[n] < quota[n] * 0.8 and n not in busy]
    donors = {n for n in counts if n not in busy and n not in hungry and counts[n] > quota[n]}
    if len(counts) < 2 or not hungry or not donors:
        return ()
    cold: dict[str, list[int]] = {n: [] for n in donors}
    for slot, owner in enumerate(table.owners):
        if owner in donors and slot not in by_node[owner].slots:  # its owner sees no load
            cold[owner].append(slot)
    moves: list[Move] = []
    for dst in hungry:
        want = min(quota[dst] - counts[dst], cfg.join_batch - len(moves))
        for src in sorted(donors, key=lambda n: -counts[n]):
            free = [
                s
                for s in cold[src]
                if now - state.moved_at.get(("slot", s), float("-inf")) >= cfg.join_settle_s
            ]
            take = free[: max(0, min(want, counts[src] - quota[src]))]
            cold[src] = [s for s in cold[src] if s not in set(take)]
            moves += [Move(("slot", slot), src, dst, 0.0) for slot in take]
            counts[src] -= len(take)
            counts[dst] += len(take)
            want -= len(take)
    return tuple(moves)
