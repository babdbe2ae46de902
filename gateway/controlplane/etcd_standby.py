"""What a standby gateway knows without the core: the loads it watches. Pure.

A standby routes, answers ``/v1/status`` and applies admission control from the
nodes' load keys; the leader's planner does the same from the same reports.
"""

from __future__ import annotations

import contextlib
from typing import Any

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.etcd import KeyValue
from clientlib.kernel.session_protocol import ProtocolError
from gateway.controlplane.planner import NodeLoad, PlannerConfig, imbalance

__all__ = ["StandbyAdmission", "standby_status", "watched_loads"]


def _reports(loads: dict[str, KeyValue]) -> dict[str, cp.LoadReport]:
    out = {}
    for node, kv in loads.items():
        with contextlib.suppress(ProtocolError):
            msg = cp.decode(kv.value)
            if isinstance(msg, cp.Report) and msg.load.capacity > 0:
                out[node] = msg.load
    return out


def watched_loads(loads: dict[str, KeyValue]) -> list[NodeLoad]:
    """node → its ``load`` key, as the planner's view (rate against capacity)."""
    return [
        NodeLoad(node=node, capacity=ld.capacity, rate=ld.rate)
        for node, ld in _reports(loads).items()
    ]


class StandbyAdmission:
    """The planner's admission rule and hysteresis, over the watched loads."""

    def __init__(self, cfg: PlannerConfig):
        self.cfg = cfg
        self.shedding = False

    def update(self, loads: list[NodeLoad]) -> bool:
        cap = sum(n.capacity for n in loads)
        if cap:
            mean = sum(n.rate for n in loads) / cap
            if self.shedding and mean < self.cfg.admission_low:
                self.shedding = False
            elif not self.shedding and mean > self.cfg.admission_high:
                self.shedding = True
        return self.shedding


def standby_status(loads: dict[str, KeyValue]) -> dict[str, Any]:
    nodes = {
        node: {
            "rate": ld.rate,
            "capacity": ld.capacity,
            "util": round(ld.rate / ld.capacity, 4),
            "pressure": ld.pressure,
            "sessions": ld.sessions,
            "alive": True,
        }
        for node, ld in _reports(loads).items()
    }
    views = watched_loads(loads)
    return {"nodes": nodes, "imbalance": round(imbalance(views), 4) if views else None}
