"""A simulated fleet for closed-loop tests of the planner. Pure: time is a number, nothing sleeps.

What it mirrors, and from where:

* each backend reports once a second, at its own phase, an EWMA (tau 1.5 s) of what
  each key handled in the last interval, as ``backend.load.LoadMeter.report`` does:
  a key that arrives counts from its arrival on, a key that leaves is forgotten at
  once; the node's rate is the sum of its keys' rates, its pressure flag has the
  same hysteresis (above 0.85, cleared below 0.70);
* the top 16 keys are reported one by one; the long tail of many small keys is
  modelled as one load per slot, never reported as a key (it is thousands of keys);
* the controller (``Controller.tick``) plans every 0.5 s on the latest reports plus
  the projection of recent arrivals (``Controller._projected``); a batch of moves
  commits ``move_delay_s`` later; the nodes of a batch are busy until then and for
  ``settle_s`` after (``settle_after_move_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from clientlib.kernel.routing import SlotTable
from gateway.controlplane.planner import Move, NodeLoad, Plan, PlannerConfig, PlannerState, plan

Item = str | int  # a key modelled one by one, or the tail of small keys in a slot
TICKS_PER_S = 10  # the simulation's clock resolution: 0.1 s


@dataclass(frozen=True, slots=True)
class Round:
    """A plan() call that returned load moves (not join moves)."""

    at: float
    moves: tuple[Move, ...]
    reason: str


@dataclass
class Fleet:
    caps: dict[str, float]
    table: SlotTable
    keys: dict[str, tuple[int, float]]  # key → (slot, messages/s)
    tails: dict[int, float]  # slot → messages/s of its many small keys
    phase: dict[str, int]  # report phase per node, in ticks (0..9)
    onset: dict[str, float] = field(default_factory=dict)  # key → time its load starts
    tau_s: float = 1.5
    move_delay_s: float = 0.2
    settle_s: float = 1.5
    top_n: int = 16
    # state
    held: dict[str, set[Item]] = field(init=False)  # what each node owns now
    # An item whose rate is constant and has been on its node for ever averages to its
    # rate: it is kept in per-node sums; the others (arrived, starting) are averaged.
    static: dict[str, set[Item]] = field(init=False)
    static_slots: dict[str, dict[int, float]] = field(init=False)
    ewma: dict[str, dict[Item, float]] = field(init=False)
    since: dict[Item, float] = field(init=False)
    reports: dict[str, NodeLoad] = field(init=False)
    pressure: dict[str, bool] = field(init=False)
    last_report: dict[str, float] = field(init=False)
    arrivals: list[tuple[float, str, float]] = field(init=False)
    in_flight: list[tuple[float, frozenset[str], tuple[Move, ...]]] = field(init=False)
    settle_until: dict[str, float] = field(init=False)
    rounds: list[Round] = field(init=False)
    moved: list[tuple[float, Move]] = field(init=False)
    true_moved: float = field(init=False, default=0.0)  # the true rates of what moved
    after: dict[float, float] = field(init=False)  # commit time → true max/mean after it
    isolated: tuple[str, ...] = ()  # as the last plan reported them
    epoch: int = 1000

    def __post_init__(self) -> None:
        self.held = {n: set() for n in self.caps}
        for k in self.keys:
            self.held[self.owner(k)].add(k)
        for s in self.tails:
            self.held[self.owner(s)].add(s)
        self.static = {n: {i for i in h if i not in self.onset} for n, h in self.held.items()}
        self.static_slots = {n: {} for n in self.caps}
        for n, items in self.static.items():
            for i in items:
                s = self.slot(i)
                self.static_slots[n][s] = self.static_slots[n].get(s, 0.0) + self.true_rate(i, 0)
        self.ewma = {n: {} for n in self.caps}
        self.since = {}
        self.pressure = dict.fromkeys(self.caps, False)
        self.last_report = {n: -1.0 + p / TICKS_PER_S for n, p in self.phase.items()}
        self.arrivals, self.in_flight, self.rounds, self.moved = [], [], [], []
        self.settle_until, self.after = {}, {}
        self.reports = {n: self._report(n) for n in self.caps}

    # ---------------------------------------------------------------- ground truth

    def slot(self, item: Item) -> int:
        return self.keys[item][0] if isinstance(item, str) else item

    def owner(self, item: Item) -> str:
        if isinstance(item, str) and item in self.table.overrides:
            return self.table.overrides[item][0]
        owner = self.table.owners[self.slot(item)]
        assert owner is not None
        return owner

    def true_rate(self, item: Item, t: float) -> float:
        if isinstance(item, str):
            return self.keys[item][1] if t >= self.onset.get(item, -math.inf) else 0.0
        return self.tails[item]

    def true_loads(self, t: float) -> dict[str, float]:
        return {n: sum(self.true_rate(i, t) for i in items) for n, items in self.held.items()}

    def true_imbalance(self, t: float) -> float:
        loads = self.true_loads(t)
        mean = sum(loads.values()) / sum(self.caps.values())
        return max(loads[n] / self.caps[n] for n in loads) / mean if mean > 0 else 1.0

    # ---------------------------------------------------------------- what nodes report

    def _report(self, n: str) -> NodeLoad:
        slots = dict(self.static_slots[n])
        named = [(k, self.true_rate(k, 0)) for k in self.static[n] if isinstance(k, str)]
        for i, r in self.ewma[n].items():
            slots[self.slot(i)] = slots.get(self.slot(i), 0.0) + r
            if isinstance(i, str):
                named.append((i, r))
        named.sort(key=lambda x: -x[1])
        hot = tuple((k, self.keys[k][0], r) for k, r in named[: self.top_n])
        rate = sum(slots.values())
        score = rate / self.caps[n]
        if self.pressure[n] and score < 0.70:
            self.pressure[n] = False
        elif not self.pressure[n] and score > 0.85:
            self.pressure[n] = True
        return NodeLoad(n, self.caps[n], rate, self.pressure[n], slots, hot)

    def report(self, n: str, t: float) -> None:
        """``LoadMeter.report``: EWMA of each item's count over the last interval."""
        last = self.last_report[n]
        dt = t - last
        alpha = 1.0 - math.exp(-dt / self.tau_s)
        avg = self.ewma[n]
        for i in self.held[n] - self.static[n]:
            start = max(last, self.since.get(i, -math.inf))
            if isinstance(i, str):
                start = max(start, self.onset.get(i, -math.inf))
            inst = self.true_rate(i, t) * max(0.0, t - start) / dt
            old = avg.get(i, 0.0)
            avg[i] = old + alpha * (inst - old)
        self.last_report[n] = t
        self.reports[n] = self._report(n)

    def view(self, t: float) -> list[NodeLoad]:
        """The reports as the controller hands them to the planner (``_projected``)."""
        out = []
        for n, ld in self.reports.items():
            extra = sum(
                x * math.exp(-(t - at) / self.tau_s) for at, d, x in self.arrivals if d == n
            )
            out.append(
                NodeLoad(ld.node, ld.capacity, ld.rate + extra, ld.pressure, ld.slots, ld.hot_keys)
                if extra > 0.01
                else ld
            )
        return out

    # ---------------------------------------------------------------- moves

    def _apply(self, moves: tuple[Move, ...], t: float) -> None:
        self.epoch += 1
        for m in moves:
            kind, u = m.unit
            if kind == "slot":
                s = int(u)
                owner = self.owner(s)
                items: list[Item] = [s] if s in self.tails else []
                items += [k for k in self.held[owner] if isinstance(k, str) and self._rides(k, s)]
                self.table.set_slot(s, m.dst, self.epoch)
            else:
                items = [str(u)] if str(u) in self.keys else []
                self.table.set_override(str(u), m.dst, self.epoch)
            self.true_moved += sum(self.true_rate(i, t) for i in items)
            for i in items:
                src = next(n for n, h in self.held.items() if i in h)
                self.held[src].discard(i)
                if i in self.static[src]:
                    self.static[src].discard(i)
                    sums = self.static_slots[src]
                    sums[self.slot(i)] -= self.true_rate(i, t)
                    if sums[self.slot(i)] < 1e-9:
                        del sums[self.slot(i)]
                self.ewma[src].pop(i, None)  # the source forgets a key that left
                self.held[m.dst].add(i)
                self.since[i] = t
            self.arrivals.append((t, m.dst, m.load))
            self.moved.append((t, m))

    def _rides(self, key: str, slot: int) -> bool:
        return self.keys[key][0] == slot and key not in self.table.overrides

    def run(
        self, cfg: PlannerConfig, until: float, state: PlannerState | None = None
    ) -> PlannerState:
        """Run the loop from t = 0 (ticks every 0.5 s) up to ``until``."""
        state = state or PlannerState()
        for k in range(round(until * TICKS_PER_S) + 1):
            t = k / TICKS_PER_S
            for done, nodes, moves in [f for f in self.in_flight if f[0] <= t + 1e-9]:
                self.in_flight.remove((done, nodes, moves))
                self._apply(moves, done)
                for n in nodes:
                    self.settle_until[n] = done + self.settle_s
                self.after[t] = self.true_imbalance(t)
            for n, ph in self.phase.items():
                if k % TICKS_PER_S == ph:
                    self.report(n, t)
            if k % (TICKS_PER_S // 2) == 0:
                self._tick(cfg, state, t)
        return state

    def _tick(self, cfg: PlannerConfig, state: PlannerState, t: float) -> None:
        busy = {n for _, nodes, _ in self.in_flight for n in nodes}
        busy |= {n for n, until in self.settle_until.items() if until > t + 1e-9}
        p: Plan = plan(self.view(t), self.table, state, t, cfg, frozenset(busy))
        self.isolated = p.isolated
        if not p.moves:
            return
        if p.reason in ("pressure", "imbalance"):
            self.rounds.append(Round(t, p.moves, p.reason))
        by_src: dict[str, list[Move]] = {}
        for m in p.moves:
            by_src.setdefault(m.src, []).append(m)
        for src, ms in by_src.items():
            nodes = frozenset({src} | {m.dst for m in ms})
            self.in_flight.append((t + self.move_delay_s, nodes, tuple(ms)))
