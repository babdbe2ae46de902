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

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.routing import SlotTable

Unit = tuple[str, int | str]  # ("slot", 17) or ("key", "room:42")


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
    max_moves: int = 4096
    max_moved_share: float = 1.0  # of the fleet's load, per round
    min_unit_rate: float = 0.5
    admission_high: float = 0.95
    admission_low: float = 0.85
    join_batch: int = 4096  # cold (load-free) slots handed to an under-filled node per round
    steady_s: float = 1.0  # a view that rose in the last steady_s is still filling in

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
    rising_at: float = float("-inf")  # when a node's rate last rose by more than its band
    waiting_since: float | None = None  # a round held back since, while the view rose


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
    join = _join_moves(loads, table, cfg, busy)
    if len(loads) < 2 or total <= 0:
        return Plan(join, "join" if join else "", imbalance=imb)
    isolated = _isolated(loads, mean)
    # A pressured node close to the mean is fleet-wide load, not a hotspot: moving its
    # units would only pass the pressure around (admission control handles that).
    relief = mean * (1 + cfg.tolerance / 2)
    pressured = any(n.pressure and n.node not in busy and n.util > relief for n in loads)
    peak = max(loads, key=lambda n: n.util)
    unbalanced = (
        imb > 1 + cfg.tolerance
        and peak.util > cfg.floor
        and now - state.last_imbalance_round >= cfg.imbalance_period_s
    )
    names = tuple(k for k, _, _ in isolated)
    steady = _steady(loads, state, now, cfg, busy, mean)
    if not (pressured or unbalanced) or not steady:
        return Plan(join, "join" if join else "", names, imbalance=imb)
    if unbalanced:
        state.last_imbalance_round = now
    cooling = {u for u, t in state.moved_at.items() if now - t < cfg.cooldown_s}
    items = {n.node: _items(n, table, cooling, cfg) for n in loads if n.node not in busy}
    # Four ways to pack, the best kept: units placed where they end least utilized or
    # where they fill a gap best; receivers filled to a margin under their line or up to
    # it. The margin is worth up to 10 % more moved load, not more.
    drafts = [
        _Draft(loads, items, cfg, busy, mean, tight, margin)
        for margin in (True, False)
        for tight in (False, True)
    ]
    draft = min(drafts, key=lambda d: d.solve(isolated))
    for it in draft.committed:
        state.moved_at[it.unit] = now
        for key in it.riders:  # they moved with their slot: same cooldown
            state.moved_at[("key", key)] = now
    moves = tuple(draft.moves)
    if not moves and join:
        return Plan(join, "join", names, imbalance=imb)
    reason = "pressure" if pressured else "imbalance"
    return Plan(moves, reason if moves else "", names, imbalance=imb)


def _steady(
    loads: list[NodeLoad],
    state: PlannerState,
    now: float,
    cfg: PlannerConfig,
    busy: frozenset[str],
    mean: float,
) -> bool:
    """Whether the view has stopped filling in, or a round has waited long enough.

    Reports are averages (EWMA): a hotspot that just started shows at a fraction of
    its rate and keeps rising for seconds. A round planned on that view moves too
    little, to the wrong places, and the next rounds chase it. An average still has
    about its last step to go; so a rise beyond a quarter of a node's tolerance band
    (the margin receivers are left with) within ``steady_s`` holds the round back, for
    ``imbalance_period_s`` at most (a slow ramp must not hold it back for ever). Nodes
    in ``busy`` are left out: their moves change their view on purpose.
    """
    for n in loads:
        before = state.seen.get(n.node, n.rate)
        state.seen[n.node] = n.rate
        if n.node not in busy and n.rate - before > cfg.tolerance / 4 * mean * n.capacity:
            state.rising_at = now
    if now - state.rising_at >= cfg.steady_s:
        state.waiting_since = None
        return True
    if state.waiting_since is None:
        state.waiting_since = now
    if now - state.waiting_since >= cfg.imbalance_period_s:
        state.waiting_since = None
        return True
    return False


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


def _items(n: NodeLoad, table: SlotTable, cooling: set[Unit], cfg: PlannerConfig) -> list[_Item]:
    """Movable units on node ``n``, hottest first (a key before a slot of the same load).

    A slot's load is what moving it takes along: its remainder plus the reported keys
    in it that have no override of their own.
    """
    out: list[_Item] = []
    residual = dict(n.slots)
    riders: dict[int, list[tuple[str, float]]] = {}
    for key, slot, rate in n.hot_keys:
        if slot in residual:
            residual[slot] -= rate
        rides = key not in table.overrides and 0 <= slot < table.num_slots
        rides = rides and table.owners[slot] == n.node
        if rides:
            riders.setdefault(slot, []).append((key, rate))
        if rate >= cfg.min_unit_rate and ("key", key) not in cooling:
            out.append(_Item(("key", key), rate, slot if rides else -1))
    for slot, rate in residual.items():
        ks = riders.get(slot, [])
        load = rate + sum(r for _, r in ks)
        if (
            load >= cfg.min_unit_rate
            and 0 <= slot < table.num_slots
            and table.owners[slot] == n.node
            and ("slot", slot) not in cooling
        ):
            out.append(_Item(("slot", slot), load, riders=tuple(k for k, _ in ks)))
    out.sort(key=lambda it: (-it.load, it.unit[0] == "slot"))
    return out


_EPS = 1e-9


class _Draft:
    """One round's target assignment, built move by move on planned loads.

    A node that receives a unit stays under its line, mean·(1 + tolerance) of its
    capacity, so under steady load no unit has a reason to move again; busy nodes
    and nodes given to an isolated key receive nothing.
    """

    def __init__(
        self,
        loads: list[NodeLoad],
        items: dict[str, list[_Item]],
        cfg: PlannerConfig,
        busy: frozenset[str],
        mean: float,
        tight: bool,
        margin: bool,
    ) -> None:
        self.cfg = cfg
        self.mean = mean
        self.tight = tight  # place on the fullest node a unit fits (else the least utilized)
        self.cap = {n.node: n.capacity for n in loads}
        self.load = {n.node: n.rate for n in loads}
        self.line = {n.node: mean * (1 + cfg.tolerance) * n.capacity for n in loads}
        # Receivers are filled to a quarter band under the line: what just arrived shows
        # late in reports, and a receiver perched on its line would be the next source.
        self.below = cfg.tolerance / 4 * mean if margin else 0.0
        self.fill = {n.node: self.line[n.node] - self.below * n.capacity for n in loads}
        self.margin = margin
        self.items = items  # movable units per node, shared by the drafts of a round
        self.busy = busy
        self.closed: set[str] = set(busy)  # not a destination this round
        self.moves: list[Move] = []
        self.committed: list[_Item] = []
        self.taken: set[Unit] = set()
        self.carved: dict[Unit, float] = {}  # load a slot lost to its keys moved alone
        self.budget = cfg.max_moved_share * sum(self.load.values())
        self.forks = [64]  # trial drafts left for this round, shared with its forks
        self.fixed = {n: self.load[n] - self._movable(n) for n in self.load}  # stays put

    def fork(self) -> _Draft:
        self.forks[0] -= 1
        d = copy.copy(self)
        d.load, d.closed, d.moves = dict(self.load), set(self.closed), list(self.moves)
        d.committed, d.taken, d.carved = list(self.committed), set(self.taken), dict(self.carved)
        return d

    def adopt(self, d: _Draft) -> None:
        self.load, self.closed, self.moves, self.budget = d.load, d.closed, d.moves, d.budget
        self.committed, self.taken, self.carved = d.committed, d.taken, d.carved

    def eff(self, it: _Item) -> float:
        """What moving ``it`` now takes along (0 once it, or the slot it rides in, has moved)."""
        if it.unit in self.taken or ("slot", it.slot) in self.taken:
            return 0.0
        return it.load - self.carved.get(it.unit, 0.0)

    def _movable(self, n: str) -> float:
        return sum(self.eff(it) for it in self.items.get(n, ()) if it.slot < 0)

    def live(self, n: str) -> list[tuple[_Item, float]]:
        return [(it, e) for it in self.items.get(n, ()) if (e := self.eff(it)) > _EPS]

    # ---------------------------------------------------------------- the round

    def solve(self, isolated: list[tuple[str, str, float]]) -> tuple[float, float, int]:
        """Build the round; returns its cost: load left over lines, moved load, moves."""
        # Big units first, as in bin packing: they need the few big gaps, which small
        # units would otherwise fill. Emptying the isolated keys' nodes comes last.
        homes = [h for key, node, rate in isolated if (h := self.isolate(key, node, rate))]
        self.pack(homes)
        # An isolated key above the line sets the fleet's max anyway: where the line
        # cannot be met, other nodes may go up to that level, not beyond.
        level = max((self.load[h] / self.cap[h] for h, _ in homes), default=0.0)
        if level > self.mean * (1 + self.cfg.tolerance):
            for n, c in self.cap.items():
                self.line[n] = max(self.line[n], level * c)
                self.fill[n] = max(self.fill[n], (level - self.below) * c)
            self.pack(homes)
        left = sum(max(0.0, self.load[n] - self.line[n]) for n in self.load if n not in self.closed)
        moved = sum(m.load for m in self.moves)
        return left, moved / 1.1 if self.margin else moved, len(self.moves)

    def pack(self, homes: list[tuple[str, str]]) -> None:
        over = [n for n in self.load if n not in self.closed and self.load[n] > self.line[n]]
        for n in sorted(over, key=self._urgency):
            self.shed(n, self.line[n], depth=2)
        for home, key in homes:
            for it, _ in self.live(home):
                if not self._carries(it, key):
                    self.place(it, home, depth=1)

    def _urgency(self, n: str) -> tuple[bool, float]:
        """Nodes whose small units cannot cover their excess (a big unit has to go) first."""
        need = self.load[n] - self.line[n]
        small = self._sum_upto(n, need)
        return small >= need, -self.load[n] / self.cap[n]

    def _sum_upto(self, n: str, need: float) -> float:
        """What the units of at most ``need`` add up to, each key counted once."""
        live = self.live(n)
        big_slots = {it.unit[1] for it, e in live if it.unit[0] == "slot" and e > need}
        return sum(e for it, e in live if e <= need and (it.slot < 0 or it.slot in big_slots))

    def isolate(self, key: str, node: str, rate: float) -> tuple[str, str] | None:
        """Give ``key`` a node of its own: the one where it ends least hot, or any that keeps
        it under its line, the cheapest to empty; the key moves there now, the node is
        emptied once bigger units have found room. Returns (home, key)."""
        if node in self.busy:
            self.closed.add(node)
            return None
        item = next((it for it in self.items[node] if it.unit == ("key", key)), None)
        home = self._home(key, node, rate) if item is not None else node
        if home is None or (home == node and node in self.closed):
            return None
        if home != node:
            if item is None or not self.can_move(rate):
                return None
            self.commit(item, node, home)
        self.closed.add(home)
        return home, key

    def _home(self, key: str, node: str, rate: float) -> str | None:
        free = [n for n in self.load if n not in self.closed]
        if not free:
            return None
        kept = sum(e for it, e in self.live(node) if it.slot < 0 and self._carries(it, key))

        def alone(n: str) -> float:  # the node's utilization once only the key is left on it
            return (self.fixed[n] + (kept if n == node else rate)) / self.cap[n]

        level = max(min(alone(n) for n in free), self.mean * (1 + self.cfg.tolerance))

        def cost(n: str) -> float:  # load to move: the rest off its node, or the key + a node
            return self._movable(node) - kept if n == node else rate + self._movable(n)

        fits = [n for n in free if alone(n) <= level + _EPS]
        return min(fits, key=lambda n: (cost(n), alone(n)))

    @staticmethod
    def _carries(it: _Item, key: str) -> bool:
        return it.unit == ("key", key) or key in it.riders

    def shed(self, src: str, target: float, depth: int) -> bool:
        """Move units off ``src`` until it is down to ``target``, with the least moved load:
        small units only, or the smallest bigger unit that can go (then small ones)."""
        if self.load[src] - target <= _EPS:
            return True
        if self.forks[0] <= 0:
            return self.shed_small(src, target, 0)
        base = len(self.moves)
        tries = []
        for small_only in (True, False):
            d = self.fork()
            ok = d.shed_small(src, target, depth) if small_only else d.shed_big(src, target, depth)
            moved = sum(m.load for m in d.moves[base:])
            tries.append((not ok, moved if ok else d.load[src], len(d.moves), d))
        # Done with the least moved load, or else as far down as it gets.
        best = min(tries, key=lambda t: t[:3])
        self.adopt(best[3])
        return not best[0]

    def shed_small(self, src: str, target: float, depth: int) -> bool:
        while (need := self.load[src] - target) > _EPS:
            live = self.live(src)
            # One unit that leaves the source between the mean and its line: one move.
            band = self.cfg.tolerance * self.mean * self.cap[src]
            one = [(it, e) for it, e in reversed(live) if need <= e <= need + band]
            moved = next((e for it, e in one if self.place(it, src, 0)), 0.0)
            if moved <= 0:
                moved = self.greedy(src, [(it, e) for it, e in live if e <= need], need, depth)
            if moved <= 0:
                return False
        return True

    def shed_big(self, src: str, target: float, depth: int) -> bool:
        need = self.load[src] - target
        big = [it for it, e in reversed(self.live(src)) if e > need]
        # The smallest few by a chain; a bigger one that fits as it is, in any case.
        if not any(self.place(it, src, depth if i < 3 else 0) for i, it in enumerate(big)):
            return False
        return self.shed_small(src, target, depth)

    def greedy(self, src: str, small: list[tuple[_Item, float]], need: float, depth: int) -> float:
        """Hottest first, each unit no more than what is still to go: few moves, no overshoot."""
        moved = 0.0
        for it, _ in small:
            e = self.eff(it)
            if 0 < e <= need - moved + _EPS:
                if self.place(it, src, depth):
                    moved += e
                    if need - moved <= _EPS:
                        break
                else:
                    depth = 0  # no room even by a chain: the smaller units take what is left
        return moved

    def place(self, it: _Item, src: str, depth: int) -> bool:
        """Move ``it`` to the node where it ends least utilized under its line; with ``depth``,
        to a node that makes room for it by moving some of its own units on first."""
        e = self.eff(it)
        if e <= 0 or not self.can_move(e):
            return False
        self.load[src] -= e  # gone while we look, so a chain of moves may end on src
        fit = [n for n in self.load if n not in self.closed and n != src]
        fit = [n for n in fit if self.load[n] + e <= self.fill[n] + _EPS]
        if self.tight:
            dst = min(fit, key=lambda n: self.fill[n] - self.load[n], default=None)
        else:
            dst = min(fit, key=lambda n: (self.load[n] + e) / self.cap[n], default=None)
        if dst is None and depth > 0:
            dst = self.make_room(src, e, depth)
        self.load[src] += e
        if dst is None:
            return False
        self.commit(it, src, dst)
        return True

    def make_room(self, src: str, e: float, depth: int) -> str | None:
        room = {n: self.fill[n] - self.load[n] for n in self.load if n not in self.closed}
        room.pop(src, None)
        for n in sorted(room, key=lambda n: -room[n])[:3]:
            if self.fill[n] - self.fixed[n] < e or self.forks[0] <= 0:
                continue  # even emptied it could not take it
            trial = self.fork()
            trial.closed.add(n)  # nothing moved off n comes back to it
            if trial.shed(n, self.fill[n] - e, depth - 1) and trial.can_move(e):
                trial.closed.discard(n)
                self.adopt(trial)
                return n
        return None

    def can_move(self, e: float) -> bool:
        return len(self.moves) < self.cfg.max_moves and e <= self.budget + _EPS

    def commit(self, it: _Item, src: str, dst: str) -> None:
        e = self.eff(it)
        self.moves.append(Move(it.unit, src, dst, e))
        self.committed.append(it)
        self.taken.add(it.unit)
        if it.slot >= 0:
            u: Unit = ("slot", it.slot)
            self.carved[u] = self.carved.get(u, 0.0) + e
        self.load[src] -= e
        self.load[dst] += e
        self.budget -= e


def _join_moves(
    loads: list[NodeLoad], table: SlotTable, cfg: PlannerConfig, busy: frozenset[str]
) -> tuple[Move, ...]:
    """Hand load-free slots to nodes holding well under their share of slots."""
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
    cold: dict[str, list[int]] = {}
    for slot, owner in enumerate(table.owners):
        if owner in counts and slot not in hot_slots:
            cold.setdefault(owner, []).append(slot)
    moves: list[Move] = []
    for dst in hungry:
        want = min(int(share) - counts[dst], cfg.join_batch - len(moves))
        donors = sorted(
            (n for n in nodes if n != dst and n not in busy and n not in hungry),
            key=lambda n: -counts[n],
        )
        for src in donors:
            spare = counts[src] - int(share)
            free = cold.get(src, [])
            while spare > 0 and want > 0 and free:
                moves.append(Move(("slot", free.pop(0)), src, dst, 0.0))
                counts[src] -= 1
                counts[dst] += 1
                spare -= 1
                want -= 1
    return tuple(moves)
