"""Moves: the durable record of a move in flight, and the history of finished ones. Pure.

A :class:`MoveRecord` is written to the directory (durably) *before* the
release order goes out, and removed in the same write that commits or aborts
it. So a control plane that restarts in the middle of a move finds it and
finishes it: it sends the release again (a node answers a repeated release
the same way) and commits or aborts as usual.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clientlib.kernel.routing import Unit

__all__ = ["HistoryEntry", "MoveHistory", "MoveRecord"]


@dataclass(slots=True)
class MoveRecord:
    """A move in flight."""

    id: int
    src: str
    epoch: int
    targets: tuple[tuple[Unit, str], ...]  # (unit, destination)
    reason: str
    load: float
    before: dict[str, float] = field(default_factory=dict)  # utilization when planned
    # Not persisted: timers restart with the process that runs the move.
    started: float = 0.0
    deadline: float = 0.0
    next_send: float = 0.0

    @property
    def nodes(self) -> set[str]:
        return {self.src} | {dst for _, dst in self.targets}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "src": self.src,
            "epoch": self.epoch,
            "targets": [[kind, u, dst] for (kind, u), dst in self.targets],
            "reason": self.reason,
            "load": self.load,
            "before": self.before,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MoveRecord:
        targets: tuple[tuple[Unit, str], ...] = tuple(
            ((str(kind), int(u) if kind == "slot" else str(u)), str(dst))
            for kind, u, dst in obj["targets"]
        )
        return cls(
            int(obj["id"]),
            str(obj["src"]),
            int(obj["epoch"]),
            targets,
            str(obj.get("reason", "")),
            float(obj.get("load", 0.0)),
            {str(k): float(v) for k, v in obj.get("before", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One finished move (admin API ``/v1/moves``)."""

    at: float  # wall clock
    reason: str
    src: str
    dst: str | None
    units: tuple[Unit, ...]
    load: float
    outcome: str
    utilization_before: dict[str, float] = field(default_factory=dict)
    utilization_after: dict[str, float] = field(default_factory=dict)
    duration_ms: float | None = None
    epoch: int | None = None

    @property
    def outcome_kind(self) -> str:
        """``done`` or ``aborted`` (the outcome without its detail)."""
        return self.outcome.split(":", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "reason": self.reason,
            "src": self.src,
            "dst": self.dst,
            "units": [list(u) for u in self.units[:20]],
            "unit_count": len(self.units),
            "load": round(self.load, 2),
            "outcome": self.outcome,
            "utilization_before": self.utilization_before,
            "utilization_after": self.utilization_after,
            "duration_ms": self.duration_ms,
            "epoch": self.epoch,
        }


class MoveHistory:
    """The last ``size`` finished moves, counters by outcome and by (reason, outcome),
    and whoever wants to hear of each finished move (the metrics)."""

    def __init__(self, size: int = 500):
        self.items: deque[HistoryEntry] = deque(maxlen=size)
        self.outcomes: dict[str, int] = {}
        self.by_reason: dict[tuple[str, str], int] = {}
        self.observers: list[Callable[[HistoryEntry], None]] = []

    def add(self, entry: HistoryEntry) -> None:
        self.items.append(entry)
        kind = entry.outcome_kind
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        key = (entry.reason, kind)
        self.by_reason[key] = self.by_reason.get(key, 0) + 1
        for observe in self.observers:
            observe(entry)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.items]
