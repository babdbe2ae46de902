"""One simulation: a seed's scenario played over simulated time, checked at every step.

:func:`simulate` builds the world from the seed (one ``random.Random(seed)`` for
everything), runs the **chaos** phase (the workload, forced and planned moves,
the profile's faults), then the **heal** phase: every fault off, every crashed
process started again, and each client must finish its work within
``HEAL_BOUND_S``. It returns a :class:`Result` with the trace's hash, and the
invariant, detail and last events of the first violation, if any.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import structlog

from backend.store import MemoryStore
from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import SlotTable
from loadtest.sim.backend_actor import BackendActor
from loadtest.sim.client_actor import ClientActor
from loadtest.sim.faults import PROFILES, FaultInjector, FaultState
from loadtest.sim.invariants import Checker, Violation
from loadtest.sim.network import Net
from loadtest.sim.plane_actor import PlaneActor
from loadtest.sim.scheduler import Scheduler, Trace
from loadtest.sim.workload import Scenario

__all__ = ["HEAL_BOUND_S", "Result", "World", "quiet_logs", "simulate"]

#: After the faults heal, every client finishes within this (see docs/reliability.md).
HEAL_BOUND_S = 30.0


@dataclass(slots=True)
class Result:
    seed: int
    profile: str
    durability: str
    digest: str
    ok: bool
    invariant: str = ""
    detail: str = ""
    tail: list[str] = field(default_factory=list)
    scenario: str = ""
    steps: int = 0
    sim_time: float = 0.0
    heal_time: float = 0.0  # the slowest client's finish, after the heal
    applied: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # what the run went through


class World:
    def __init__(self, seed: int, profile: str, durability: str, *, full_trace: bool = False):
        self.rng = random.Random(seed)
        self.scenario = Scenario.draw(seed, profile, durability, self.rng)
        sc = self.scenario
        self.sched = Scheduler()
        self.trace = Trace(full=full_trace)
        self.net = Net(self.sched, self.rng, sc.lat_lo, sc.lat_hi)
        self.checker = Checker(durability, sc.app, lambda m: self.trace.log(self.sched.now, m))
        self.store = MemoryStore()  # survives every crash
        rates = PROFILES[profile]
        self.faults = FaultState(self, rates)
        self.injector = FaultInjector(self, rates)
        self.healed = False
        self.counts: dict[str, int] = {}
        self.ctl_ids = 0
        self.conn_ids = 0
        self._sids = 0
        self._last_encoded: tuple[object, bytes] = (None, b"")
        self._tables: dict[bytes, SlotTable] = {}
        self.plane = PlaneActor(self)
        self.backends = {n: BackendActor(self, n) for n in sc.nodes}
        self.clients = [
            ClientActor(self, c.name, c.key, c.total, c.rate, c.window) for c in sc.clients
        ]

    def encode_control(self, msg: cp.ControlMessage) -> bytes:
        """``cp.encode``, once per message object (a broadcast goes to every node)."""
        if msg is not self._last_encoded[0]:
            self._last_encoded = (msg, cp.encode(msg))
        return self._last_encoded[1]

    def decode_control(self, raw: bytes) -> cp.ControlMessage:
        """``cp.decode``, once per distinct table: checking a 4096-slot table is the
        costliest step of a simulation, and every node gets the same one."""
        table = self._tables.get(raw)
        if table is not None:
            return cp.TableUpdate(table.copy())
        msg = cp.decode(raw)
        if isinstance(msg, cp.TableUpdate):
            if len(self._tables) >= 16:
                self._tables.clear()
            self._tables[raw] = msg.table.copy()
        return msg

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def new_sid(self) -> str:
        """Session ids, repeatable (the node's default draws them from ``secrets``)."""
        self._sids += 1
        return f"s{self._sids}"

    # ------------------------------------------------------------------ checks

    def check_step(self) -> None:
        """Invariant 1, every step: at most one node holds a key active, unfrozen and
        under a valid lease."""
        now = self.sched.now
        holder: dict[str, str] = {}
        for b in self.backends.values():
            node = b.node
            if node is None or not node.serving(now):
                continue
            for key, ak in node.keys.items():
                if ak.frozen:
                    continue
                other = holder.get(key)
                if other is not None:
                    self.checker.fail(
                        "single-owner", f"{other} and {b.name} both serve {key!r} at {now:.3f}"
                    )
                holder[key] = b.name

    def all_done(self) -> bool:
        return self.healed and all(c.done_at is not None for c in self.clients)

    # ------------------------------------------------------------------ the run

    def run(self) -> float:
        """Play the scenario; returns the slowest finish after the heal. Raises Violation."""
        sc, sched = self.scenario, self.sched
        self.trace.log(0.0, sc.describe())
        self.plane.start()
        for i, b in enumerate(self.backends.values()):
            sched.at(0.01 * i, b.start)
        for c, plan in zip(self.clients, sc.clients, strict=True):
            sched.at(plan.start, c.start)
        self.injector.schedule(sc.chaos_s)
        t = self.rng.expovariate(sc.forced_moves_per_s) if sc.forced_moves_per_s else sc.chaos_s
        while t < sc.chaos_s:
            key = self.rng.choice(sc.keys)
            sched.at(t, self.plane.force_move, key, self.rng.random() < 0.5)
            t += self.rng.expovariate(sc.forced_moves_per_s)
        sched.run(sc.chaos_s, self.check_step, lambda: False)
        self.healed = True
        healed_at = sched.now
        self.trace.log(healed_at, "heal: every fault off")
        self.injector.heal()
        sched.run(healed_at + HEAL_BOUND_S, self.check_step, self.all_done)
        late = [c.name for c in self.clients if c.done_at is None]
        if late:
            raise Violation(
                "availability",
                f"clients {late} not done {HEAL_BOUND_S:g}s after the faults healed",
            )
        return max((c.done_at or 0.0) - healed_at for c in self.clients)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The cores log through structlog; thousands of seeds must not print megabytes."""
    saved = structlog.get_config()
    structlog.configure(
        processors=[_drop],
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


def _drop(*_: object) -> NoReturn:
    raise structlog.DropEvent


def simulate(seed: int, profile: str, durability: str, *, full_trace: bool = False) -> Result:
    world = World(seed, profile, durability, full_trace=full_trace)
    res = Result(seed, profile, durability, "", True, scenario=world.scenario.describe())
    with quiet_logs():
        try:
            res.heal_time = world.run()
        except Violation as v:
            res.ok = False
            res.invariant, res.detail = v.invariant, v.detail
            world.trace.log(world.sched.now, f"VIOLATION {v.invariant}: {v.detail}")
    res.digest = world.trace.digest()
    res.tail = list(world.trace.tail)
    res.steps = world.sched.steps
    res.sim_time = world.sched.now
    res.applied = world.checker.applied
    for b in world.backends.values():
        b.tally()
    world.count("history entries applied", world.checker.applied)
    world.count("history entries dropped (licensed)", world.checker.dropped)
    for kind, n in world.injector.count.items():
        world.count(f"fault {kind}", n)
    res.counts = dict(sorted(world.counts.items()))
    return res
