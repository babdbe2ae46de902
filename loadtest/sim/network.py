"""The simulated network: ordered pipes with latency, links that can be cut or partitioned.

A :class:`Pipe` is one direction of a TCP-like stream: items arrive in the
order they were sent, after a latency drawn from the seed's generator. A
:class:`Link` is a pair of pipes between two endpoints (a client's connection
through the gateway to a node, or a node's control session with the plane).

* **Cut**: the link is gone; what was in flight is lost. Each side is told by its
  owner (the actors decide when each side notices).
* **Partition**: nothing arrives until it heals (TCP retransmits: what was sent is
  delayed, not lost); if it lasts longer than the link's detection time (pings,
  heartbeats), the link is cut.
* **Adversarial control faults** (``Pipe.send(..., ordered=False)`` and the caller's
  loss and duplication): an item may overtake earlier ones. Real control links
  are TCP and never do this; the simulator can, as a superset of what TCP allows.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable
from typing import Any

from loadtest.sim.scheduler import Scheduler, Timer

__all__ = ["Link", "Net", "Pipe"]


class Net:
    """Latency and partitions, shared by every link of one simulation."""

    def __init__(self, sched: Scheduler, rng: random.Random, lat_lo: float, lat_hi: float):
        self.sched = sched
        self.rng = rng
        self.lat_lo = lat_lo
        self.lat_hi = lat_hi
        self.slow_until = 0.0  # a delay fault: latencies stretched up to slow_extra
        self.slow_extra = 0.0
        self.partitions: set[tuple[str, str]] = set()  # unordered endpoint pairs, sorted
        self.links: list[Link] = []

    def latency(self) -> float:
        lat = self.lat_lo + self.rng.random() * (self.lat_hi - self.lat_lo)
        if self.sched.now < self.slow_until:
            lat += self.rng.random() * self.slow_extra
        return lat

    @staticmethod
    def pair(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a <= b else (b, a)

    def partitioned(self, a: str, b: str) -> bool:
        return self.pair(a, b) in self.partitions

    def partition(self, a: str, b: str) -> None:
        self.partitions.add(self.pair(a, b))
        for link in list(self.links):
            if link.joins(a, b):
                link.hold()

    def heal(self, a: str, b: str) -> None:
        self.partitions.discard(self.pair(a, b))
        for link in list(self.links):
            if link.joins(a, b):
                link.release()

    def heal_all(self) -> None:
        for a, b in sorted(self.partitions):
            self.heal(a, b)


class Pipe:
    """One direction of a stream: in order, after a latency; held while partitioned."""

    __slots__ = ("_n", "closed", "deliver", "held", "last", "net", "queue", "timer")

    def __init__(self, net: Net, deliver: Callable[[Any], None]):
        self.net = net
        self.deliver = deliver
        self.queue: list[tuple[float, int, Any]] = []  # (arrival, order, item), sorted
        self.timer: Timer | None = None
        self.held = False
        self.closed = False
        self.last = 0.0  # arrival time of the newest ordered item
        self._n = 0

    def send(self, item: Any, *, ordered: bool = True, extra: float = 0.0) -> None:
        if self.closed:
            return
        when = self.net.sched.now + self.net.latency() + extra
        if ordered:
            when = max(when, self.last)
            self.last = when
        self._n += 1
        bisect.insort(self.queue, (when, self._n, item), key=lambda x: (x[0], x[1]))
        self._arm()

    def in_flight(self) -> int:
        return len(self.queue)

    def _arm(self) -> None:
        if self.held or self.closed or not self.queue:
            return
        head = self.queue[0][0]
        if self.timer is not None and not self.timer.cancelled and self.timer.when == head:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.net.sched.at(head, self._arrive)

    def _arrive(self) -> None:
        self.timer = None
        if self.held or self.closed or not self.queue:
            return
        if self.queue[0][0] > self.net.sched.now:
            self._arm()
            return
        _, _, item = self.queue.pop(0)
        self.deliver(item)
        self._arm()

    def hold(self) -> None:
        self.held = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def release(self) -> None:
        """The partition healed: what waited arrives now, in order, after a latency."""
        if not self.held:
            return
        self.held = False
        t = self.net.sched.now
        retimed = []
        for _, n, item in self.queue:
            t = max(t, self.net.sched.now + self.net.latency())
            retimed.append((t, n, item))
        self.queue = retimed
        self.last = max(self.last, t)
        self._arm()

    def cut(self) -> int:
        """Lose what is in flight; nothing more is sent or delivered. Returns items lost."""
        lost = len(self.queue)
        self.closed = True
        self.queue.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return lost


class Link:
    """Two pipes between endpoints ``a`` and ``b``; ``on_dead`` when a partition outlasts
    ``detect_s`` (the owner cuts it and tells each side)."""

    def __init__(
        self,
        net: Net,
        a: str,
        b: str,
        to_a: Callable[[Any], None],
        to_b: Callable[[Any], None],
        *,
        detect_s: float,
        on_dead: Callable[[], None],
    ):
        self.net = net
        self.a, self.b = a, b
        self.a_to_b = Pipe(net, to_b)
        self.b_to_a = Pipe(net, to_a)
        self.detect_s = detect_s
        self.on_dead = on_dead
        self.cut_done = False
        self._watch: Timer | None = None
        net.links.append(self)
        if net.partitioned(a, b):
            self.hold()

    def joins(self, a: str, b: str) -> bool:
        return {self.a, self.b} == {a, b}

    def hold(self) -> None:
        self.a_to_b.hold()
        self.b_to_a.hold()
        if self._watch is None and not self.cut_done:
            self._watch = self.net.sched.after(self.detect_s, self._dead)

    def release(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.a_to_b.release()
        self.b_to_a.release()

    def _dead(self) -> None:
        self._watch = None
        if not self.cut_done:
            self.on_dead()

    def cut(self) -> None:
        """Both directions lose what is in flight; the link is forgotten."""
        if self.cut_done:
            return
        self.cut_done = True
        self.a_to_b.cut()
        self.b_to_a.cut()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self in self.net.links:
            self.net.links.remove(self)
