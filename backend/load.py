"""Load accounting and the pressure signal, from what the node observes. Pure: the clock
is passed in.

A report says, smoothed:

* **demand** (``rate``): messages/s arriving, per key and per node (EWMA, ``tau``).
  Counted when a message arrives at the node's server (``arrive``) when the node
  has one, else when it is processed (``record``). A key handed off leaves at once.
* **capacity**: messages/s the node serves *while busy*, estimated online as the
  smoothed messages served over the smoothed busy time (``cap_tau``); only
  intervals busy for at least ``min_busy`` of their length count (an idle
  second says nothing about speed). Busy time is the server's (with a service
  queue) or the process's CPU time. Before the first estimate: ``capacity`` if
  configured, else ``prior``. A configured ``capacity`` stays a cap.
* **utilization** = demand / capacity: what the planner sizes moves with;
* **delay**: time in system (arrival at the node to processed), p90 over the
  interval, smoothed (``delay_tau``);
* **score** = the largest of utilization, delay / ``target_ms`` and event-loop
  lag / ``lag_target_ms``: each is 1.0 at its limit, and the scarcest resource
  decides. The pressure flag has hysteresis on it: raised above ``high``,
  cleared only below ``low``, so a node near the line does not flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from clientlib.kernel.control_protocol import LoadReport

__all__ = ["DelayHistogram", "LoadMeter"]


class DelayHistogram:
    """Times in system of one interval: log buckets 15 % wide from 0.05 ms (bounded
    memory, any count), for the interval's p90."""

    __slots__ = ("buckets", "count")

    BASE_MS = 0.05
    STEP = 1.15
    SIZE = 120  # up to 0.05 ms · 1.15^119 ≈ 860 s

    def __init__(self) -> None:
        self.buckets = [0] * self.SIZE
        self.count = 0

    def add(self, seconds: float) -> None:
        ms = seconds * 1000
        i = 0 if ms <= self.BASE_MS else int(math.log(ms / self.BASE_MS, self.STEP)) + 1
        self.buckets[min(i, self.SIZE - 1)] += 1
        self.count += 1

    def quantile(self, q: float) -> float:
        """The upper edge (ms) of the bucket holding quantile ``q`` (0 when empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank and n:
                return float(self.BASE_MS * self.STEP**i)
        return float(self.BASE_MS * self.STEP ** (self.SIZE - 1))


@dataclass(slots=True)
class LoadMeter:
    capacity: float | None = None  # a configured cap, messages/s (None: estimated only)
    high: float = 0.85
    low: float = 0.70
    tau: float = 1.5  # demand EWMA time constant, seconds
    cap_tau: float = 5.0  # capacity estimate: served and busy time, smoothed this long
    delay_tau: float = 1.0  # p90 time in system, smoothed this long
    target_ms: float = 50.0  # time in system at which the delay part of the score is 1.0
    lag_target_ms: float = 200.0  # event-loop lag at which its part of the score is 1.0
    prior: float = 1000.0  # capacity assumed before the first estimate, without a cap
    min_busy: float = 0.1  # busy fraction below which an interval says nothing of capacity
    queued: bool = False  # demand is counted by arrive() (a service queue), not record()
    measure: bool = True  # estimate capacity from the busy time reported (else: the cap/prior)
    top_n: int = 16
    pressure: bool = False
    _counts: dict[str, list[Any]] = field(default_factory=dict)  # key → [slot, n]
    _rates: dict[str, tuple[int, float]] = field(default_factory=dict)  # key → (slot, ewma)
    _rate: float = 0.0
    _served: int = 0  # this interval
    _handler_n: int = 0
    _handler_s: float = 0.0
    _handler: float = 0.0
    _delays: DelayHistogram = field(default_factory=DelayHistogram)
    _delay: float = 0.0  # smoothed p90, ms
    _cap_served: float = 0.0  # smoothed messages/s served, over busy intervals
    _cap_busy: float = 0.0  # smoothed busy fraction, over the same intervals
    _last: float | None = None

    def __post_init__(self) -> None:
        if self.capacity is not None and self.capacity <= 0:
            raise ValueError("capacity must be > 0 messages/s")
        if not 0 < self.low < self.high:
            raise ValueError("pressure marks need 0 < low < high")
        if min(self.tau, self.cap_tau, self.delay_tau, self.target_ms, self.prior) <= 0:
            raise ValueError("time constants, target_ms and prior must be > 0")
        if not 0 <= self.min_busy < 1:
            raise ValueError("min_busy must be in [0, 1)")

    # ------------------------------------------------------------------ observations

    def arrive(self, key: str, slot: int) -> None:
        """A message for ``key`` arrived at the node's server (demand)."""
        self._count(key, slot)

    def record(self, key: str, slot: int, handler_s: float) -> None:
        """A message was processed; its handler took ``handler_s``."""
        self._served += 1
        self._handler_n += 1
        self._handler_s += handler_s
        if not self.queued:
            self._count(key, slot)

    def sojourn(self, seconds: float) -> None:
        """A message's time in system: from its arrival at the node to processed."""
        self._delays.add(seconds)

    def _count(self, key: str, slot: int) -> None:
        c = self._counts.get(key)
        if c is None:
            self._counts[key] = [slot, 1]
        else:
            c[1] += 1

    def forget(self, key: str) -> None:
        """The key left this node: its load goes with it."""
        self._counts.pop(key, None)
        self._rates.pop(key, None)

    # ------------------------------------------------------------------ estimates

    def estimate(self) -> float:
        """Messages/s this node serves while busy: the online estimate, capped."""
        est = self._cap_served / self._cap_busy if self._cap_busy > 0 else None
        if est is None:
            return self.capacity if self.capacity is not None else self.prior
        return min(est, self.capacity) if self.capacity is not None else est

    def _estimate_capacity(self, dt: float, busy: float) -> None:
        if not self.measure or busy < self.min_busy or self._served == 0:
            return
        served = self._served / dt
        if self._cap_busy <= 0:
            self._cap_served, self._cap_busy = served, busy
            return
        a = 1.0 - math.exp(-dt / self.cap_tau)
        self._cap_served += a * (served - self._cap_served)
        self._cap_busy += a * (busy - self._cap_busy)

    # ------------------------------------------------------------------ the report

    def report(
        self, now: float, *, sessions: int, loop_lag_ms: float = 0.0, busy: float = 0.0
    ) -> LoadReport:
        """The interval since the last report, folded into the smoothed view.
        ``busy``: the fraction of the interval the node was busy serving."""
        dt = 1.0 if self._last is None else max(now - self._last, 1e-3)
        self._last = now
        busy = min(max(busy, 0.0), 1.0)
        alpha = 1.0 - math.exp(-dt / self.tau)
        counts = self._counts
        self._counts = {}
        rates = self._rates
        for key, (slot, r) in list(rates.items()):
            c = counts.pop(key, None)
            inst = c[1] / dt if c else 0.0
            new = r + alpha * (inst - r)
            if new < 0.01 and not c:
                del rates[key]
            else:
                rates[key] = (slot, new)
        for key, (slot, n) in counts.items():
            rates[key] = (slot, alpha * n / dt)
        # The node's rate is the sum of its keys' rates: a key handed off leaves at once.
        self._rate = sum(r for _, r in rates.values())
        if self._handler_n:
            self._handler = self._handler_s / self._handler_n
        self._estimate_capacity(dt, busy)
        self._served = self._handler_n = 0
        self._handler_s = 0.0
        delays, self._delays = self._delays, DelayHistogram()
        p90 = delays.quantile(0.9)
        self._delay += (1.0 - math.exp(-dt / self.delay_tau)) * (p90 - self._delay)
        capacity = self.estimate()
        util = self._rate / capacity
        score = max(util, self._delay / self.target_ms, loop_lag_ms / self.lag_target_ms)
        if self.pressure and score < self.low:
            self.pressure = False
        elif not self.pressure and score > self.high:
            self.pressure = True
        slots: dict[int, float] = {}
        for slot, r in rates.values():
            slots[slot] = slots.get(slot, 0.0) + r
        hot = sorted(((k, s, r) for k, (s, r) in rates.items()), key=lambda x: -x[2])[: self.top_n]
        return LoadReport(
            rate=self._rate,
            capacity=capacity,
            score=score,
            pressure=self.pressure,
            sessions=sessions,
            keys=len(rates),
            slots=slots,
            hot_keys=tuple(hot),
            handler_us=self._handler * 1e6,
            loop_lag_ms=loop_lag_ms,
            busy=busy,
            delay_ms=self._delay,
        )
