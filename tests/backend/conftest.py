from __future__ import annotations

import pytest

from backend.apps.counter import CounterApp
from backend.config import BackendConfig
from backend.load import LoadMeter
from backend.node import Node
from backend.store import SQLiteStore


class FakeWire:
    def __init__(self) -> None:
        self.wakes = 0
        self.closed: tuple[int, str] | None = None

    def wake(self) -> None:
        self.wakes += 1

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def clock():
    return Clock()


def make_node(store, clock, node_id="n1", app=None, **cfg) -> Node:
    cfg.setdefault("direct", True)
    return Node(
        app or CounterApp(),
        store,
        LoadMeter(1000.0),
        BackendConfig(node_id=node_id, **cfg),
        clock=clock,
    )


def controlled(node: Node, table, lease_s: float = 3.0) -> Node:
    """Put a node under a control plane: a table and a lease."""
    node.join_control_plane()
    node.grant_lease(node.clock() + lease_s)
    node.set_view(table)
    return node
