"""Fault profiles and the injector that plays one during a seed's chaos phase.

Each fault kind is a Poisson process with a rate (per second of chaos) in the
profile; its target (a node, a client, a connection) and its size (how long,
how often) are drawn when it fires. ``heal`` turns every fault off at the end
of the chaos phase: partitions heal, stalls end, the store works, crashed
processes are started again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from loadtest.sim.control_link import PLANE
from loadtest.sim.recorder import StoreFaults

if TYPE_CHECKING:
    from loadtest.sim.world import World

__all__ = ["PROFILES", "FaultInjector", "FaultRates", "FaultState"]


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Events per second of chaos, per kind (0: never)."""

    cut: float = 0.0  # a client's connection breaks (reset, or half-open)
    ctl_drop: float = 0.0  # a node's control session drops (it registers again)
    node_crash: float = 0.0  # kill -9 of a backend, restarted later
    sigterm: float = 0.0  # graceful stop of a backend, restarted later
    stall: float = 0.0  # a backend runs nothing for a while (up to twice its lease)
    plane_crash: float = 0.0  # kill -9 of the gateway and its control plane
    client_crash: float = 0.0  # a client process dies (its session is lost)
    node_partition: float = 0.0  # a backend cut off from the gateway host
    client_partition: float = 0.0  # a client cut off from the gateway
    store_trouble: float = 0.0  # a backend's store calls fail for a while
    slow: float = 0.0  # latency spikes
    ctl_chaos: float = 0.0  # per control message: lost, duplicated, reordered (not TCP)
    ambiguous_store: bool = False  # a failed write may have taken effect


PROFILES: dict[str, FaultRates] = {
    "none": FaultRates(),
    "light": FaultRates(
        cut=0.15,
        ctl_drop=0.03,
        node_crash=0.02,
        sigterm=0.02,
        stall=0.02,
        plane_crash=0.02,
        client_crash=0.02,
        slow=0.03,
    ),
    "default": FaultRates(
        cut=0.3,
        ctl_drop=0.08,
        node_crash=0.05,
        sigterm=0.04,
        stall=0.05,
        plane_crash=0.04,
        client_crash=0.04,
        node_partition=0.04,
        client_partition=0.04,
        store_trouble=0.06,
        slow=0.05,
    ),
    "heavy": FaultRates(
        cut=0.6,
        ctl_drop=0.3,
        node_crash=0.1,
        sigterm=0.06,
        stall=0.1,
        plane_crash=0.08,
        client_crash=0.08,
        node_partition=0.15,
        client_partition=0.08,
        store_trouble=0.12,
        slow=0.1,
        ambiguous_store=True,
    ),
}
# Beyond TCP: control messages also lost, duplicated and reordered within a session.
PROFILES["adversarial"] = dataclasses.replace(PROFILES["heavy"], ctl_chaos=0.15)


class FaultState:
    """The faults in force now, read by the links and the stores."""

    def __init__(self, world: World, rates: FaultRates):
        self.store = StoreFaults(world.rng, rates.ambiguous_store)
        self.ctl_chaos = rates.ctl_chaos


class FaultInjector:
    def __init__(self, world: World, rates: FaultRates):
        self.world = world
        self.rates = rates
        self.count: dict[str, int] = {}

    def schedule(self, until: float) -> None:
        """Draw every fault's firing times in [0, until) now, kind by kind."""
        w = self.world
        for f in fields(FaultRates):
            rate = getattr(self.rates, f.name)
            if not isinstance(rate, float) or rate <= 0 or f.name == "ctl_chaos":
                continue
            t = w.rng.expovariate(rate)
            while t < until:
                w.sched.at(t, self.fire, f.name)
                t += w.rng.expovariate(rate)

    def fire(self, kind: str) -> None:
        w = self.world
        if w.healed:
            return
        self.count[kind] = self.count.get(kind, 0) + 1
        getattr(self, f"_{kind}")()

    def _node(self) -> str:
        """A node to hit: mostly one that holds keys (a fault elsewhere tests little)."""
        w = self.world
        busy = [n for n, b in w.backends.items() if b.node is not None and b.node.keys]
        if busy and w.rng.random() < 0.7:
            return w.rng.choice(busy)
        return w.rng.choice(w.scenario.nodes)

    def _cut(self) -> None:
        w = self.world
        c = w.rng.choice(w.clients)
        c.cut(w.rng.choice(("reset", "reset", "client_lost")))

    def _ctl_drop(self) -> None:
        b = self.world.backends[self._node()]
        if b.ctl is not None:
            b.ctl.drop("injected")

    def _restart_later(self, node: str, lo: float, hi: float) -> None:
        w = self.world
        w.sched.after(lo + w.rng.random() * (hi - lo), self._restart, node)

    def _restart(self, node: str) -> None:
        w = self.world
        b = w.backends[node]
        if b.retired:
            return
        if b.up and (b.stopping or b.stalled_until > w.sched.now):
            w.sched.after(0.5, self._restart, node)  # not gone yet: it stops, or wakes
        elif not b.up:
            b.start()

    def _node_crash(self) -> None:
        node = self._node()
        if self.world.backends[node].up:
            self.world.backends[node].crash()
            self._restart_later(node, 0.3, 4.0)

    def _sigterm(self) -> None:
        w = self.world
        node = self._node()
        b = w.backends[node]
        others = [o for o in w.backends.values() if o is not b and not o.retired]
        if not b.up or b.stopping:
            return
        b.sigterm()
        if others and w.rng.random() < 0.2:
            b.retired = True  # decommissioned: its units must find other owners for good
            w.trace.log(w.sched.now, f"{node} retired")
        else:
            self._restart_later(node, 1.0, 7.0)

    def _stall(self) -> None:
        w = self.world
        w.backends[self._node()].stall(0.2 + w.rng.random() * 2 * w.scenario.lease_s)

    def _plane_crash(self) -> None:
        w = self.world
        if w.rng.random() < 0.3:
            w.plane.crash_mid_step = True  # dies after its next step saved, before it sends
        else:
            w.plane.crash()
        w.sched.after(0.2 + w.rng.random() * 5.0, self._plane_restart)

    def _plane_restart(self) -> None:
        p = self.world.plane
        if p.up and p.crash_mid_step:
            p.crash()  # it never got to a step: crash now
        if not p.up:
            p.start()

    def _client_crash(self) -> None:
        w = self.world
        c = w.rng.choice(w.clients)
        c.crash()
        w.sched.after(0.1 + w.rng.random() * 3.0, c.restart)

    def _partition(self, a: str, lo: float, hi: float) -> None:
        w = self.world
        w.trace.log(w.sched.now, f"partition {a} | {PLANE}")
        w.net.partition(a, PLANE)
        w.sched.after(lo + w.rng.random() * (hi - lo), self._heal, a)

    def _heal(self, a: str) -> None:
        w = self.world
        if w.net.partitioned(a, PLANE):
            w.trace.log(w.sched.now, f"partition {a} | {PLANE} healed")
            w.net.heal(a, PLANE)

    def _node_partition(self) -> None:
        self._partition(self._node(), 0.5, 10.0)

    def _client_partition(self) -> None:
        self._partition(self.world.rng.choice(self.world.clients).name, 0.5, 8.0)

    def _store_trouble(self) -> None:
        w = self.world
        node = self._node()
        rate = 0.2 + 0.8 * w.rng.random()
        w.trace.log(w.sched.now, f"store fails for {node} at {rate:.2f}")
        w.faults.store.failing[node] = rate
        w.sched.after(0.3 + w.rng.random() * 3.0, self._store_ok, node)

    def _store_ok(self, node: str) -> None:
        self.world.faults.store.failing.pop(node, None)

    def _slow(self) -> None:
        w = self.world
        w.net.slow_extra = 0.05 + w.rng.random() * 0.45
        w.net.slow_until = w.sched.now + 0.5 + w.rng.random() * 2.5

    def heal(self) -> None:
        """Every fault off; what crashed starts again."""
        w = self.world
        w.faults.store.failing.clear()
        w.faults.ctl_chaos = 0.0
        w.net.slow_until = 0.0
        w.net.heal_all()
        for b in w.backends.values():
            if b.up and b.stalled_until > w.sched.now:
                b.stalled_until = w.sched.now
                b.wake(b.inc)
        if w.plane.crash_mid_step:
            w.plane.crash()
        if not w.plane.up:
            w.plane.start()
        for name in w.scenario.nodes:
            self._restart(name)
        for c in w.clients:
            c.restart()
