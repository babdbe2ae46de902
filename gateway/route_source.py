"""Where routes come from: the interface the data plane reads, and the static source.

The data plane asks three things: who owns a key, where that node listens,
and (static mode only) who to try when the owner is unreachable. The embedded
control plane's directory implements the same interface, and so could an
etcd-backed one.
"""

from __future__ import annotations

from typing import Any, Protocol

from clientlib.kernel.routing import Route, SlotTable, fallback_routes, static_table
from clientlib.kernel.settings import parse_hostport

__all__ = [
    "RouteSource",
    "StaticDirectory",
]


class RouteSource(Protocol):
    def route(self, key: str) -> Route | None: ...

    def address(self, node: str) -> tuple[str, int] | None: ...

    def fallback(self, key: str, exclude: set[str]) -> str | None:
        """Another node to try when the owner is unreachable; None: do not fail over."""

    def retry_after(self, node: str) -> int | None:
        """Seconds until an unreachable owner's keys are likely served again (its lease
        runs out and they are reassigned); None: answer 502, nothing will change soon."""

    def view(self) -> dict[str, Any]:
        """JSON view for the admin API."""

    def version(self) -> int:
        """Changes whenever any route changes."""


class StaticDirectory:
    """A fixed list of plain WebSocket servers, hashed consistently (rendezvous)."""

    def __init__(self, backends: list[str]):
        self.addrs = {b: parse_hostport(b, "static_backend") for b in backends}
        self.table: SlotTable = static_table(self.addrs)

    def route(self, key: str) -> Route | None:
        return self.table.route(key)

    def address(self, node: str) -> tuple[str, int] | None:
        return self.addrs.get(node)

    def fallback(self, key: str, exclude: set[str]) -> str | None:
        order = fallback_routes(key, list(self.addrs), exclude)
        return order[0] if order else None

    def retry_after(self, node: str) -> int | None:
        return None

    def version(self) -> int:
        return 0

    def view(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for n in self.table.owners:
            if n is not None:
                counts[n] = counts.get(n, 0) + 1
        return {
            "mode": "static",
            "nodes": [{"id": n, "address": n, "slots": counts.get(n, 0)} for n in self.addrs],
        }
