"""Load accounting and the pressure signal. Pure: the clock is passed in.

Load is work done: messages handled per second, smoothed with an EWMA, per
key and per node, against the node's configured capacity (messages/s it can
carry). The pressure flag has hysteresis: raised above ``high``, cleared only
below ``low``, so a node near the line does not flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from clientlib.kernel.control_protocol import LoadReport

__all__ = [
    "LoadMeter",
]


@dataclass(slots=True)
class LoadMeter:
    capacity: float
    high: float = 0.85
    low: float = 0.70
    tau: float = 1.5  # EWMA time constant, seconds
    top_n: int = 16
    pressure: bool = False
    _counts: dict[str, list[Any]] = field(default_factory=dict)  # key → [slot, n, handler_s]
    _rates: dict[str, tuple[int, float]] = field(default_factory=dict)  # key → (slot, ewma)
    _rate: float = 0.0
    _handler: float = 0.0
    _last: float | None = None

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ValueError("capacity must be > 0 messages/s")
        if not 0 < self.low < self.high:
            raise ValueError("pressure marks need 0 < low < high")

    def record(self, key: str, slot: int, handler_s: float) -> None:
        c = self._counts.get(key)
        if c is None:
            self._counts[key] = [slot, 1, handler_s]
        else:
            c[1] += 1
            c[2] += handler_s

    def forget(self, key: str) -> None:
        """The key left this node: its load goes with it."""
        self._counts.pop(key, None)
        self._rates.pop(key, None)

    def report(
        self, now: float, *, sessions: int, loop_lag_ms: float = 0.0, busy: float = 0.0
    ) -> LoadReport:
        dt = 1.0 if self._last is None else max(now - self._last, 1e-3)
        self._last = now
        alpha = 1.0 - math.exp(-dt / self.tau)
        total = 0
        handler = 0.0
        counts = self._counts
        self._counts = {}
        rates = self._rates
        for key, (slot, r) in list(rates.items()):
            c = counts.pop(key, None)
            inst = c[1] / dt if c else 0.0
            new = r + alpha * (inst - r)
            if c:
                total += c[1]
                handler += c[2]
            if new < 0.01 and not c:
                del rates[key]
            else:
                rates[key] = (slot, new)
        for key, (slot, n, h) in counts.items():
            rates[key] = (slot, alpha * n / dt)
            total += n
            handler += h
        # The node's rate is the sum of its keys' rates: a key handed off leaves at once.
        self._rate = sum(r for _, r in rates.values())
        if total:
            self._handler = handler / total
        slots: dict[int, float] = {}
        for slot, r in rates.values():
            slots[slot] = slots.get(slot, 0.0) + r
        hot = sorted(((k, s, r) for k, (s, r) in rates.items()), key=lambda x: -x[2])[: self.top_n]
        score = self._rate / self.capacity
        if self.pressure and score < self.low:
            self.pressure = False
        elif not self.pressure and score > self.high:
            self.pressure = True
        return LoadReport(
            rate=self._rate,
            capacity=self.capacity,
            score=score,
            pressure=self.pressure,
            sessions=sessions,
            keys=len(rates),
            slots=slots,
            hot_keys=tuple(hot),
            handler_us=self._handler * 1e6,
            loop_lag_ms=loop_lag_ms,
            busy=busy,
        )
