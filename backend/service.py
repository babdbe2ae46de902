"""A node's finite capacity: one FIFO server with a fixed service time. Pure: time is passed in.

With ``service_time_us`` set, a backend serves its clients' messages one at a
time, each taking ``service_s`` of the server: message *i* finishes at
``max(arrival_i, finish_{i-1}) + service_s``. A node whose demand passes
``1 / service_s`` messages/s builds a queue, and its clients feel it as latency
that grows for as long as the overload lasts. The work is virtual (no CPU is
burnt): on a machine whose cores are shared by every process of a test, CPU work
would make every node as slow as the busiest, which is not what a fleet of
separate machines does. See ``docs/loadtest.md``.

An item whose connection ended while it waited (``dead``) leaves the queue
without taking the server's time: the client resends it wherever it reconnects,
so a node that handed a hot key off does not keep serving the key's backlog.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["ServiceQueue"]

T = TypeVar("T")


class ServiceQueue(Generic[T]):
    """FIFO items with the virtual times they finish at, and the server's busy time."""

    __slots__ = ("busy_s", "finish", "items", "served", "service_s")

    def __init__(self, service_s: float):
        if not service_s > 0:
            raise ValueError("service time must be > 0")
        self.service_s = service_s
        self.items: deque[tuple[float, T]] = deque()  # (arrival, item), in arrival order
        self.finish = float("-inf")  # when the server finished (or finishes) its last item
        self.busy_s = 0.0  # the server's time spent on items served so far
        self.served = 0

    def __len__(self) -> int:
        return len(self.items)

    def offer(self, now: float, item: T) -> None:
        self.items.append((now, item))

    def next_at(self, dead: Callable[[T], bool]) -> float | None:
        """When the first live item finishes (None: nothing waits). Dead items are
        passed over here and leave through :meth:`due`."""
        for arrival, item in self.items:
            if not dead(item):
                return max(arrival, self.finish) + self.service_s
        return None

    def due(self, now: float, dead: Callable[[T], bool]) -> tuple[list[tuple[float, T]], list[T]]:
        """Items finished by ``now``, in order, as (arrival, item); and the dead items
        that left the queue on the way (they took none of the server's time)."""
        done: list[tuple[float, T]] = []
        dropped: list[T] = []
        items = self.items
        while items:
            arrival, item = items[0]
            if dead(item):
                items.popleft()
                dropped.append(item)
                continue
            finish = max(arrival, self.finish) + self.service_s
            if finish > now:
                break
            items.popleft()
            self.finish = finish
            self.busy_s += self.service_s
            self.served += 1
            done.append((arrival, item))
        return done, dropped

    def drain(self) -> list[T]:
        """Everything still waiting (the node is stopping)."""
        out = [item for _, item in self.items]
        self.items.clear()
        return out
