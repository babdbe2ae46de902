"""The planner in a closed loop with a simulated fleet (``fleet_model``): it converges.

A shape: 2-12 nodes of capacity 1000 times 0.5-2; background traffic over 20,000 keys
with a Zipf law (exponent 0.6-1.5), the 64 heaviest one by one, the rest as a load
per slot; a table that balanced that background for the capacities (the fleet had
settled before the hotspot). At t = 0, 0-8 hot keys start and take 10-80 % of the
traffic, and the fleet carries 40-80 % of its capacity. Reports show them through
the EWMA, moves through the controller's projection of arrivals (see ``fleet_model``).

Definitions:

* round: a ``plan()`` call that returned load moves, and the settling after it: its
  moves commit 0.2 s later, their nodes are busy until 1.5 s after that (their next
  reports show the moves) and no round starts while any node is busy. "After round
  k" is the true assignment once round k's moves have committed.
* best: max/mean utilization of an offline assignment of the same units, knowing the
  true rates: the units the planner could move (the keys the nodes report, each
  slot's remainder, both of at least ``min_unit_rate``) placed hottest first where
  each ends least utilized (LPT), on top of the load that nothing can move. LPT is
  achievable, so the planner is held to something that exists. ``lower_bound``
  (the immovable load; the hottest unit alone where it ends least hot) is checked to
  be below it; most shapes meet it, so there LPT is optimal.
* goal: max(1 + tolerance, 1.05 · best): the tolerance when an assignment within it
  exists, else within 5 % of the best. Measured on true rates, with 1 % for the
  reports' precision (the planner sees averages, and does not move for less).
* minimum moved load (a lower bound, tighter than the load above the lines): per
  node, the load above its line mean·(1 + tolerance)·capacity, in whole units (if
  the units under it cannot add up to it, the smallest above it); at least every
  unit too hot for its node at the goal level even alone; for a node with a key
  hotter than every node's fair share, the rest beside the key if the key may stay
  (alone there it is under the line or within 2.5 % of the best: the planner moves
  all of a key's sessions for no less), else the key and the node's load above its
  line; plus the load some node must shed so the hottest unit that has to leave its
  node can land (a node where it fits at all).

Properties, for every shape: (1) after round min(3, rounds), and at the end, max/mean
≤ goal; (2) no unit moves twice during the hotspot; (3) the true load moved is at
most twice the minimum; (4) the keys hotter than every node's fair share (by 2 %) are
the ones reported as isolated, and once a round ran each ends on a node with nothing
beside it that could move (under 1 % of the key).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clientlib.kernel.routing import NUM_SLOTS, SlotTable
from gateway.controlplane.planner import Move, PlannerConfig
from tests.gateway.controlplane.fleet_model import Fleet

CFG = PlannerConfig()
HORIZON_S = 18.0  # the hold (6 s at most), three rounds 3 s apart, their settling
ZIPF_KEYS, ZIPF_HEAD = 20_000, 64
PRECISION = 1.01


@dataclass(frozen=True)
class Shape:
    caps: tuple[float, ...]
    hot: tuple[float, ...]  # relative weights of the hot keys
    hot_share: float
    zipf: float
    util: float
    phases: tuple[int, ...]  # report phase of each node, in tenths of a second
    seed: int


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    n = draw(st.integers(2, 12))
    return Shape(
        caps=tuple(draw(st.lists(st.floats(0.5, 2.0), min_size=n, max_size=n))),
        hot=tuple(draw(st.lists(st.floats(0.2, 1.0), max_size=8))),
        hot_share=draw(st.floats(0.1, 0.8)),
        zipf=draw(st.floats(0.6, 1.5)),
        util=draw(st.floats(0.4, 0.8)),
        phases=tuple(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))),
        seed=draw(st.integers(0, 2**16)),
    )


def build(shape: Shape) -> Fleet:
    rng = random.Random(shape.seed)
    caps = {f"n{i}": 1000.0 * f for i, f in enumerate(shape.caps)}
    total = shape.util * sum(caps.values())
    hot_total = shape.hot_share * total if shape.hot else 0.0
    weights = [1 / (i + 1) ** shape.zipf for i in range(ZIPF_KEYS)]
    scale = (total - hot_total) / sum(weights)
    keys: dict[str, tuple[int, float]] = {}
    tails = dict.fromkeys(range(NUM_SLOTS), 0.0)
    for i, w in enumerate(weights):
        slot = ((i + shape.seed) * 0x9E3779B97F4A7C15 >> 24) % NUM_SLOTS  # a seeded hash
        if i < ZIPF_HEAD:
            keys[f"z{i}"] = (slot, w * scale)
        else:
            tails[slot] += w * scale
    per_slot = dict(tails)
    for slot, rate in keys.values():
        per_slot[slot] += rate
    table = _settled_table(caps, per_slot)
    onset = {}
    for j, w in enumerate(shape.hot):
        keys[f"hot{j}"] = (rng.randrange(NUM_SLOTS), hot_total * w / sum(shape.hot))
        onset[f"hot{j}"] = 0.0
    tails = {s: r for s, r in tails.items() if r > 0}
    return Fleet(caps, table, keys, tails, dict(zip(caps, shape.phases, strict=True)), onset)


def _settled_table(caps: dict[str, float], per_slot: dict[int, float]) -> SlotTable:
    """A fleet balanced before the hotspot: slots placed hottest first where they end
    least utilized; load-free ones with the nodes holding fewest slots (joins done)."""
    load, count = dict.fromkeys(caps, 0.0), dict.fromkeys(caps, 0)
    owners: list[str | None] = [None] * NUM_SLOTS
    for slot in sorted(per_slot, key=lambda s: -per_slot[s]):
        rate = per_slot[slot]
        if rate > 0:
            node = min(caps, key=lambda n: (load[n] + rate) / caps[n])
        else:
            node = min(caps, key=lambda n: count[n])
        owners[slot] = node
        load[node] += rate
        count[node] += 1
    return SlotTable(owners, [0] * NUM_SLOTS)


# ------------------------------------------------------------------ the offline reference


@dataclass
class Reference:
    caps: dict[str, float]
    loads: dict[str, float]  # true, with every hot key on
    mean: float  # fleet utilization
    fixed: dict[str, float]  # load nothing can move, per node
    units: dict[str, list[float]]  # movable unit loads, per node
    isolated: dict[str, tuple[str, float]]  # key hotter than every node's fair share

    def best(self) -> float:
        """LPT: hottest unit first, onto the node where it ends least utilized."""
        load = dict(self.fixed)
        for u in sorted((u for us in self.units.values() for u in us), reverse=True):
            node = min(self.caps, key=lambda n: (load[n] + u) / self.caps[n])
            load[node] += u
        return max(load[n] / self.caps[n] for n in self.caps) / self.mean

    def lower_bound(self) -> float:
        hottest = max((u for us in self.units.values() for u in us), default=0.0)
        lb = max(self.fixed[n] / c for n, c in self.caps.items())
        lb = max(lb, min((self.fixed[n] + hottest) / c for n, c in self.caps.items()))
        return max(1.0, lb / self.mean)

    def minimum_moved(self, goal: float) -> float:
        total, landing = 0.0, 0.0
        stay = max(1 + CFG.tolerance, (1 + CFG.tolerance / 8) * self.best())
        for n, cap in self.caps.items():
            line = self.mean * (1 + CFG.tolerance) * cap
            allowed = goal * self.mean * cap  # the most a node may carry at the goal
            own = sorted(r for key, (node, r) in self.isolated.items() if node == n)
            units = self.units[n]
            forced = [u for u in units if self.fixed[n] + u > allowed and u not in own]
            for u in forced:
                landing = max(landing, self._landing(n, u, goal))
            if not own:
                total += max(_granular(units, self.loads[n] - line), sum(forced))
                continue
            rest = self.loads[n] - sum(own)
            moving_all = sum(own) + _granular(units, rest - line)
            staying = sum(own[:-1]) + rest - self.fixed[n]
            if self.fixed[n] + own[-1] <= stay * self.mean * cap:
                total += min(moving_all, staying)
            else:
                landing = max(landing, self._landing(n, own[-1], goal))
                total += moving_all
        return total + landing

    def _landing(self, src: str, u: float, goal: float) -> float:
        allowed = {n: goal * self.mean * c for n, c in self.caps.items()}
        fits = [n for n in self.caps if n != src and self.fixed[n] + u <= allowed[n]]
        return min((max(0.0, self.loads[n] + u - allowed[n]) for n in fits), default=0.0)


def _granular(units: list[float], need: float) -> float:
    """``need`` in whole units: if the smaller ones cannot add up to it, a bigger one goes."""
    if need <= 0:
        return 0.0
    if sum(u for u in units if u < need) < need:
        return max(need, min((u for u in units if u >= need), default=need))
    return need


def reference(fleet: Fleet) -> Reference:
    """What the nodes would report at steady state, split as the planner splits it."""
    t = 1e9  # every hot key on
    loads = fleet.true_loads(t)
    mean = sum(loads.values()) / sum(fleet.caps.values())
    fair = mean * max(fleet.caps.values())
    fixed, units, isolated = {}, {}, {}
    for n, items in fleet.held.items():
        named = sorted(
            ((k, fleet.true_rate(k, t)) for k in items if isinstance(k, str)), key=lambda x: -x[1]
        )[: fleet.top_n]
        slots: dict[int, float] = {}
        for i in items:
            slots[fleet.slot(i)] = slots.get(fleet.slot(i), 0.0) + fleet.true_rate(i, t)
        for k, r in named:
            slots[fleet.slot(k)] -= r
            if r > fair:
                isolated[k] = (n, r)
        units[n] = [r for _, r in named if r >= CFG.min_unit_rate]
        units[n] += [r for r in slots.values() if r >= CFG.min_unit_rate]
        fixed[n] = loads[n] - sum(units[n])
    return Reference(dict(fleet.caps), loads, mean, fixed, units, isolated)


# ------------------------------------------------------------------ the properties


def check_hotspot(shape: Shape) -> Fleet:
    fleet = build(shape)
    ref = reference(fleet)
    best = ref.best()
    assert ref.lower_bound() <= best + 1e-9
    goal = max(1 + CFG.tolerance, 1.05 * best)
    minimum = ref.minimum_moved(goal)
    start = fleet.true_imbalance(1e9)
    fleet.run(CFG, HORIZON_S)
    rounds = [r for r in fleet.rounds if r.at + fleet.move_delay_s <= HORIZON_S]  # committed
    # (1) converged within three rounds, and stays so
    k = min(3, len(rounds))
    reached = fleet.after[round(rounds[k - 1].at + fleet.move_delay_s, 1)] if k else start
    where = f"best {best:.3f}, rounds at {[r.at for r in rounds]}"
    assert reached <= goal * PRECISION, f"after round {k}: {reached:.3f} > {goal:.3f}; {where}"
    final = fleet.true_imbalance(HORIZON_S)
    assert final <= goal * PRECISION, f"at the end: {final:.3f} > {goal:.3f}; {where}"
    # (2) each unit moves once at most
    twice = [u for u, c in Counter(m.unit for _, m in fleet.moved).items() if c > 1]
    assert not twice, twice
    # (3) at most twice the least load that had to move
    assert fleet.true_moved <= 2 * minimum + 1e-6, (fleet.true_moved, minimum)
    # (4) the keys too hot to share a node are reported, and alone
    fair = ref.mean * max(fleet.caps.values())
    hot = {k for k, (_, r) in ref.isolated.items() if r > fair * 1.02}
    assert hot <= set(fleet.isolated), (hot, fleet.isolated)
    assert all(fleet.keys[k][1] > fair * 0.98 for k in fleet.isolated), fleet.isolated
    for key in hot if rounds else ():
        beside = reference(fleet).units[fleet.owner(key)]
        assert sum(beside) - fleet.keys[key][1] <= 0.01 * fleet.keys[key][1], (key, beside)
    return fleet


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(shapes())
def test_any_hotspot_converges_within_three_rounds_with_bounded_churn(shape: Shape) -> None:
    check_hotspot(shape)


@pytest.mark.parametrize("seed", range(6))
def test_three_hot_keys_on_four_backends(seed: int) -> None:
    """The issue: 4 backends, 3 hot keys with half the traffic. A balanced assignment
    exists (each hot key on its own node, the rest spread); it is reached, in 10 s."""
    shape = Shape((1.0,) * 4, (1.0,) * 3, 0.5, 1.0, 0.6, (0, 3, 5, 8), seed)
    fleet = check_hotspot(shape)
    assert fleet.true_imbalance(10.0) <= (1 + CFG.tolerance) * PRECISION  # the product's 10 s
    assert len(fleet.rounds) <= 3


def test_fleet_model_reports_averages_and_arrivals() -> None:
    """The simulated backends: a steady key shows at its rate, a starting one through
    the EWMA, and a moved one leaves its source at once and arrives gradually."""
    table = SlotTable(["a"] * 2 + ["b"] * (NUM_SLOTS - 2), [0] * NUM_SLOTS)
    fleet = Fleet(
        {"a": 1000.0, "b": 1000.0},
        table,
        {"k": (0, 100.0), "h": (1, 300.0)},
        {5: 50.0},
        {"a": 0, "b": 5},
        {"h": 0.0},
    )
    fleet.report("a", 0.0)
    assert fleet.reports["a"].rate == pytest.approx(100.0)  # h has not started yet
    fleet.report("a", 1.0)
    assert 300 * 0.45 < fleet.reports["a"].rate - 100.0 < 300 * 0.5  # 1 - e^(-1/1.5)
    fleet._apply((Move(("key", "h"), "a", "b", 300.0),), 1.2)
    fleet.report("a", 2.0)
    fleet.report("b", 1.5)
    assert fleet.reports["a"].rate == pytest.approx(100.0)  # left at once
    assert 0 < fleet.reports["b"].rate - 50.0 < 300 * 0.2  # 0.3 s of it, averaged
    assert fleet.true_loads(2.0) == {"a": 100.0, "b": 350.0}


@pytest.mark.xfail(
    strict=True,
    reason="known miss of property (3): on this shape the planner moves 889 msgs/s where "
    "the minimum is 388 (2.29x, the bound is 2x); see docs/control-plane.md, planner limits",
)
def test_ten_mixed_nodes_one_warm_key_churn_within_twice_the_minimum() -> None:
    """A counterexample hypothesis found beyond the derandomized examples CI runs."""
    check_hotspot(
        Shape(
            caps=(1, 1, 1, 1.5, 1.75, 1.125, 1.8125, 1.6484375, 0.75, 0.75),
            hot=(1.0,),
            hot_share=0.1015625,
            zipf=0.9375,
            util=0.5,
            phases=(0,) * 10,
            seed=0,
        )
    )
