"""What the checker sees of a node: the app's handlers and the store's writes.

:class:`Recorder` wraps the real app (``counter`` or ``chat``) and tells the
checker what each handler did: the position of the state it found, the entry
it applied, what it queued for which session. :class:`FaultyStore` wraps the
shared :class:`~backend.store.MemoryStore` for one node incarnation: it injects
the store faults of the profile (into records and write-through's journal appends
alike) and reports every accepted write.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import orjson

from backend.app import App, KeyContext, SessionHandle
from backend.node import Node, Session
from backend.store import Append, MemoryStore, StaleEpoch, StoredState, StoreError
from loadtest.sim.invariants import Checker

__all__ = ["FaultyStore", "Recorder", "StoreFaults"]


class Recorder(App):
    def __init__(self, inner: App, checker: Checker, node_id: str, inc: str):
        self.inner = inner
        self.name = inner.name
        self.checker = checker
        self.node_id = node_id
        self.inc = inc
        self.node: Node | None = None  # set once the node is built

    def position(self, key: str, state: Any) -> tuple[int, tuple[str, str] | None]:
        """How many entries of the key's history ``state`` holds, and its newest entry."""
        if self.inner.name == "counter":
            return int(state["count"]), None
        history = state["history"]
        if not history:
            return 0, None
        last = (str(history[-1]["from"]), str(history[-1]["text"]))
        pos = self.checker.position_of(key, *last)
        if pos is None:
            self.checker.fail(
                "history",
                f"{self.node_id} holds {key!r} with entry {last}, which is not in its history",
            )
        assert pos is not None
        return pos + 1, last

    def _epoch(self, key: str) -> int:
        assert self.node is not None
        return self.node.keys[key].epoch

    def initial_state(self, key: str) -> Any:
        self.checker.loaded(key, self.node_id, 0, None)
        return self.inner.initial_state(key)

    def load_state(self, key: str, obj: Any) -> Any:
        state = self.inner.load_state(key, obj)
        pos, last = self.position(key, state)
        self.checker.loaded(key, self.node_id, pos, last)
        return state

    def dump_state(self, state: Any) -> Any:
        return self.inner.dump_state(state)

    def on_join(self, ctx: KeyContext, session: SessionHandle, resumed: bool) -> None:
        self.checker.acted_at(ctx.key, self.node_id, self._epoch(ctx.key), "took a session")
        before = _marks(ctx)
        self.inner.on_join(ctx, session, resumed)
        pos, _ = self.position(ctx.key, ctx.state)
        for sid, seq, data in _queued(ctx, before):
            if data.get("type") == "history":
                entries = [(str(m["from"]), str(m["text"])) for m in data["messages"]]
                self.checker.history_sent(ctx.key, pos, entries)
            self.checker.pushed(sid, seq, data, pos, None)

    def on_message(self, ctx: KeyContext, session: SessionHandle, data: Any) -> None:
        assert isinstance(session, Session)
        pos, last = self.position(ctx.key, ctx.state)
        ident = (session.sid, session.inbox.last)
        msgid = str(data.get("text") if self.inner.name == "chat" else data.get("n"))
        epoch = self._epoch(ctx.key)
        self.checker.applied_msg(ctx.key, self.node_id, self.inc, epoch, pos, last, ident, msgid)
        before = _marks(ctx)
        self.inner.on_message(ctx, session, data)
        for sid, seq, out in _queued(ctx, before):
            self.checker.pushed(sid, seq, out, pos, ident)

    def on_leave(self, ctx: KeyContext, session: SessionHandle) -> None:
        self.inner.on_leave(ctx, session)


def _marks(ctx: KeyContext) -> list[tuple[Session, int]]:
    return [(s, s.outbox.last_seq) for s in ctx.members.values() if isinstance(s, Session)]


def _queued(ctx: KeyContext, before: list[tuple[Session, int]]) -> list[tuple[str, int, Any]]:
    """What the handler queued, per session: (sid, outbox seq, data)."""
    out: list[tuple[str, int, Any]] = []
    seen = {id(s) for s, _ in before}
    marks = [*before, *((s, 0) for s, _ in _marks(ctx) if id(s) not in seen)]
    for s, mark in marks:
        new = s.outbox.last_seq - mark
        if new <= 0:
            continue
        items = s.outbox.unacked()[-new:]
        for i, raw in enumerate(items):
            out.append((s.sid, mark + 1 + i, orjson.loads(raw)))
    return out


class StoreFaults:
    """Store trouble, per node: while a node's window is open, its calls fail at a rate."""

    def __init__(self, rng: random.Random, ambiguous: bool):
        self.rng = rng
        self.ambiguous = ambiguous  # a write may take effect and still report an error
        self.failing: dict[str, float] = {}  # node id → failure rate while open

    def draw(self, node: str) -> bool:
        rate = self.failing.get(node, 0.0)
        return rate > 0 and self.rng.random() < rate


class FaultyStore:
    """The shared store as one node incarnation sees it."""

    def __init__(
        self, store: MemoryStore, faults: StoreFaults, checker: Checker, node: str, inc: str
    ):
        self.store = store
        self.faults = faults
        self.checker = checker
        self.node = node
        self.inc = inc
        self.errors = 0

    def _fail(self, what: str) -> StoreError:
        self.errors += 1
        return StoreError(f"injected: {what}")

    def load(self, key: str) -> StoredState | None:
        if self.faults.draw(self.node):
            raise self._fail(f"load {key}")
        return self.store.load(key)

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        if self.faults.draw(self.node):
            self.checker.licence(self.inc)  # an unwritten state may be lost: allowed
            if self.faults.ambiguous and self.faults.rng.random() < 0.5:
                self._save(key, epoch, owner, blob)  # written, yet reported as failed
            raise self._fail(f"save {key}")
        self._save(key, epoch, owner, blob)

    def _save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        self.store.save(key, epoch, owner, blob)  # StaleEpoch propagates
        self.checker.store_write(key, epoch, owner, self.node)

    def append_journal(self, items: Sequence[Append]) -> list[StaleEpoch | None]:
        """Write-through's group commit: the whole batch fails (ambiguous: it may have
        been written, and still report the error), or each entry is fenced on its own."""
        if self.faults.draw(self.node):
            self.checker.licence(self.inc)
            if self.faults.ambiguous and self.faults.rng.random() < 0.5:
                self._append(items)
            raise self._fail(f"append {len(items)} entries")
        return self._append(items)

    def _append(self, items: Sequence[Append]) -> list[StaleEpoch | None]:
        results = self.store.append_journal(items)
        for (key, epoch, owner, _), res in zip(items, results, strict=True):
            if res is None:
                self.checker.store_write(key, epoch, owner, self.node)
        return results

    def delete(self, key: str, epoch: int, owner: str) -> None:
        self.store.delete(key, epoch, owner)

    def max_epoch(self) -> int:
        if self.faults.draw(self.node):
            raise self._fail("max_epoch")
        return self.store.max_epoch()

    def close(self) -> None:
        pass
