"""Simulated time: one clock, one queue of events, one event log. Pure and deterministic.

Everything in a simulation happens in an event taken from this queue, one at
a time, in (time, insertion order): two runs of the same seed take the same
events in the same order. The cores read :attr:`Scheduler.now` through
:meth:`Scheduler.clock`, so a core's notion of time is the simulation's.

The :class:`Trace` is the event log: every line is hashed (the run's
fingerprint: the same seed must give the same hash) and the last lines are kept
for a failure report, or all of them when a full trace is asked for.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Scheduler", "Timer", "Trace"]


class Timer:
    """A scheduled call; :meth:`cancel` makes it a no-op."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., None], args: tuple[Any, ...]):
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Timer]] = []
        self._n = 0
        self.steps = 0

    def clock(self) -> float:
        return self.now

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> Timer:
        t = Timer(max(when, self.now), fn, args)
        self._n += 1
        heapq.heappush(self._queue, (t.when, self._n, t))
        return t

    def after(self, delay: float, fn: Callable[..., None], *args: Any) -> Timer:
        return self.at(self.now + delay, fn, *args)

    def run(self, until: float, after_step: Callable[[], None], done: Callable[[], bool]) -> None:
        """Take events up to time ``until`` (or until ``done()``), calling ``after_step``
        after each one (the invariant checks)."""
        q = self._queue
        while q and q[0][0] <= until:
            when, _, t = heapq.heappop(q)
            if t.cancelled:
                continue
            self.now = when
            self.steps += 1
            t.fn(*t.args)
            after_step()
            if done():
                return
        self.now = max(self.now, until)


class Trace:
    """The event log: hashed line by line; the tail (or everything) kept."""

    def __init__(self, keep: int = 60, full: bool = False):
        self._hash = hashlib.blake2b(digest_size=16)
        self.tail: deque[str] = deque(maxlen=None if full else keep)
        self.lines = 0

    def log(self, now: float, what: str) -> None:
        line = f"{now:10.4f} {what}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.tail.append(line)
        self.lines += 1

    def digest(self) -> str:
        return self._hash.hexdigest()
