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


def check_journal_fence(store) -> None:
    """Write-through's journal appends, against any store: only the record's own owner at
    its epoch appends; a batch is checked entry by entry; a record write replaces the
    journal. (Shared by the SQLite, memory and Redis store tests.)"""
    from backend.store import StaleEpoch

    assert store.append_journal([("k", 1, "a", b"e0")])[0] is not None  # no record yet
    store.save("k", 5, "a", b"r")
    assert store.append_journal([("k", 5, "a", b"e1"), ("k", 5, "a", b"e2")]) == [None, None]
    res = store.append_journal(
        [
            ("k", 5, "b", b"x"),  # same epoch, another owner
            ("k", 4, "a", b"x"),  # the owner, at an older epoch
            ("k", 6, "a", b"x"),  # ahead of the record: write the record first
            ("k", 5, "a", b"e3"),  # the owner at its epoch: accepted in the same batch
        ]
    )
    assert [type(r) for r in res] == [StaleEpoch, StaleEpoch, StaleEpoch, type(None)]
    assert isinstance(res[0], StaleEpoch) and (res[0].stored, res[0].owner) == (5, "a")
    rec = store.load("k")
    assert (rec.epoch, rec.owner, rec.blob, rec.journal) == (5, "a", b"r", (b"e1", b"e2", b"e3"))
    store.save("k", 8, "b", b"moved")  # a handoff for b: a's journal is gone, a is fenced off
    assert store.load("k").journal == ()
    assert isinstance(store.append_journal([("k", 5, "a", b"late")])[0], StaleEpoch)
    assert store.append_journal([("k", 8, "b", b"b1")]) == [None]
    store.save("k", 8, "b", b"compacted")  # compaction by the owner
    rec = store.load("k")
    assert (rec.blob, rec.journal) == (b"compacted", ())
    store.save("m", 2, "a", b"m")
    store.append_journal([("m", 2, "a", b"m1")])
    store.delete("m", 2, "a")
    assert store.load("m") is None
    store.save("m", 3, "a", b"m")
    assert store.load("m").journal == ()  # a deleted key's journal went with it
