"""The invariants, checked as the simulation runs. Pure.

**A key's history.** Every message applied to a key's state is an entry
``(sid, seq)`` (the session and the client's sequence number) at a
**position**: the number of entries the state held before it (the counter's
count; for chat, found from the last history entry). The checker keeps each
key's history as one list. A node that applies a message must apply it at the
end of that list; a node that loads a key's state (activation) may load an
older position only if every entry it drops was applied by an incarnation
allowed to lose memory (a **licence**: it crashed, it was presumed dead while
stalled, or a store write of it failed); in write-through mode only entries
never acknowledged to their client may go. Nothing may load or apply a state the
history never reached. The drop takes effect when the loading node acts on the
key (it may yet refuse it).

**Ownership** (invariant 1). Per key, the epoch at which nodes act on it
(take a session, apply a message) never goes down, and at one epoch only one
node acts. The store accepts no write that another node's newer action has
superseded. (Checked elsewhere: every step, at most one node holds the key
active, unfrozen and under a valid lease; and a running node the plane presumes
dead holds no keys by then.)

**Exactly once, in order** (2, 3). Within one session an entry is applied once;
what the app sends to a session reaches the client once and in order (for the
counter: replies in the order of the client's messages; for chat: every
broadcast from the join on, contiguous in the key's history).

**No silent rollback.** A session that saw (received, or had acknowledged) an
entry the history later dropped must not be resumed: its client must be told
``resumed: false``. Positions a session observes never go down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Checker", "Entry", "Violation"]

Ident = tuple[str, int]  # (sid, seq) of an applied message


class Violation(Exception):
    def __init__(self, invariant: str, detail: str):
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Entry:
    sid: str
    seq: int
    msgid: str
    node: str
    inc: str  # the node incarnation that applied it
    epoch: int


@dataclass(slots=True)
class SessionView:
    """What one client session has observed (the checker's side of it)."""

    key: str
    last_pos: int | None = None  # position of the last entry whose effect it received
    replies: int = 0  # counter: replies received (reply r answers the client's seq r)
    top: tuple[int, Ident] | None = None  # highest entry seen, to check resumes against
    doomed: bool = False  # it saw something the history dropped: must not resume


class Checker:
    def __init__(self, durability: str, app: str, log: Callable[[str], None] = lambda _: None):
        self.log = log
        self.durability = durability
        self.app = app
        self.history: dict[str, list[Entry]] = {}
        self.where: dict[str, dict[Ident, int]] = {}  # (sid, seq) → position
        self.by_msg: dict[str, dict[tuple[str, str], int]] = {}  # (sid, msgid) → position
        self.licences: set[str] = set()
        self.acked: set[Ident] = set()
        self.acted: dict[str, tuple[int, str]] = {}  # key → (highest epoch acted at, node)
        self.pushes: dict[Ident, list[tuple[Any, int, Ident | None]]] = {}
        self.sessions: dict[str, SessionView] = {}
        self.pending: dict[tuple[str, str], int] = {}  # (key, node) → position it loaded
        self.applied = 0
        self.dropped = 0

    # ------------------------------------------------------------------ helpers

    def fail(self, invariant: str, detail: str) -> None:
        raise Violation(invariant, detail)

    def licence(self, inc: str) -> None:
        self.licences.add(inc)

    def head(self, key: str) -> int:
        return len(self.history.get(key, ()))

    def position_of(self, key: str, sid: str, msgid: str) -> int | None:
        return self.by_msg.get(key, {}).get((sid, msgid))

    def _view(self, sid: str, key: str) -> SessionView:
        v = self.sessions.get(sid)
        if v is None:
            v = self.sessions[sid] = SessionView(key)
        return v

    def _in_history(self, key: str, pos: int, ident: Ident) -> bool:
        h = self.history.get(key, [])
        return pos < len(h) and (h[pos].sid, h[pos].seq) == ident

    # ------------------------------------------------------------------ the key's history

    def loaded(self, key: str, node: str, pos: int, last: tuple[str, str] | None) -> None:
        """A node loaded ``key``'s state at ``pos`` (``last``: its newest entry, when the
        state names it)."""
        h = self.history.setdefault(key, [])
        if pos > len(h):
            self.fail(
                "history",
                f"{node} loaded {key!r} at position {pos}, beyond its history ({len(h)})",
            )
        self._check_tail(key, node, pos, last, "loaded")
        # The load takes effect when the node acts on it (it may yet refuse the key).
        self.pending[(key, node)] = pos

    def _check_tail(
        self, key: str, node: str, pos: int, last: tuple[str, str] | None, what: str
    ) -> None:
        if last is None or pos == 0:
            return
        e = self.history[key][pos - 1]
        if (e.sid, e.msgid) != last:
            self.fail(
                "history",
                f"{node} {what} {key!r} whose entry {pos - 1} is {last}, the history has "
                f"{(e.sid, e.msgid)}: a state from a branch that was dropped",
            )

    def _truncate(self, key: str, node: str, pos: int) -> None:
        h = self.history[key]
        for e in h[pos:]:
            if e.inc not in self.licences:
                self.fail(
                    "exactly-once",
                    f"{node} loaded {key!r} at position {pos}, dropping entry {h.index(e)} "
                    f"({e.sid}#{e.seq} applied by {e.inc}, which may not lose memory)",
                )
            if self.durability == "write-through" and (e.sid, e.seq) in self.acked:
                self.fail(
                    "exactly-once",
                    f"write-through: {node} loaded {key!r} at position {pos}, dropping the "
                    f"acknowledged message {e.sid}#{e.seq}",
                )
        where, by_msg = self.where[key], self.by_msg[key]
        for e in h[pos:]:
            where.pop((e.sid, e.seq), None)
            by_msg.pop((e.sid, e.msgid), None)
        self.dropped += len(h) - pos
        self.log(
            f"history of {key!r}: {node} loaded position {pos}, {len(h) - pos} entries dropped"
        )
        del h[pos:]

    def applied_msg(
        self,
        key: str,
        node: str,
        inc: str,
        epoch: int,
        pos: int,
        last: tuple[str, str] | None,
        ident: Ident,
        msgid: str,
    ) -> None:
        h = self.history.setdefault(key, [])
        if pos != len(h):
            self.fail(
                "history",
                f"{node} applied {ident[0]}#{ident[1]} to {key!r} at position {pos}; "
                f"the history holds {len(h)}: two states of one key diverged",
            )
        self._check_tail(key, node, pos, last, "applied to")
        where = self.where.setdefault(key, {})
        if ident in where:
            self.fail("exactly-once", f"{ident[0]}#{ident[1]} applied twice to {key!r}")
        where[ident] = pos
        self.by_msg.setdefault(key, {})[(ident[0], msgid)] = pos
        h.append(Entry(ident[0], ident[1], msgid, node, inc, epoch))
        self.applied += 1
        self.acted_at(key, node, epoch, "applied a message")

    def history_sent(self, key: str, pos: int, entries: list[tuple[str, str]]) -> None:
        """A new chat session got the history: the last entries before ``pos``."""
        h = self.history.get(key, [])
        want = [(e.sid, e.msgid) for e in h[max(pos - len(entries), 0) : pos]]
        if want != entries:
            self.fail("delivery", f"history of {key!r} at {pos} is {entries}, expected {want}")

    # ------------------------------------------------------------------ ownership

    def acted_at(self, key: str, node: str, epoch: int, what: str) -> None:
        pos = self.pending.pop((key, node), None)
        if pos is not None and pos < self.head(key):
            self._truncate(key, node, pos)
        prev = self.acted.get(key)
        if prev is not None:
            e, n = prev
            if epoch < e:
                self.fail(
                    "single-owner",
                    f"{node} {what} for {key!r} at epoch {epoch} after {n} acted at {e}",
                )
            if epoch == e and node != n:
                self.fail("single-owner", f"{node} and {n} both acted on {key!r} at epoch {e}")
        if prev is None or epoch > prev[0]:
            self.acted[key] = (epoch, node)

    def store_write(self, key: str, epoch: int, owner: str, writer: str) -> None:
        """The store accepted a write of ``key`` at ``epoch`` for ``owner`` by ``writer``."""
        prev = self.acted.get(key)
        if prev is None:
            return
        e, n = prev
        if epoch < e or (epoch == e and writer != n):
            self.fail(
                "single-owner",
                f"the store accepted {writer}'s write of {key!r} at epoch {epoch} "
                f"(for {owner}) after {n} acted on it at epoch {e}",
            )

    # ------------------------------------------------------------------ sessions

    def pushed(self, sid: str, seq: int, data: Any, pos: int, ident: Ident | None) -> None:
        """The app queued ``data`` for session ``sid`` at outbox ``seq``, reflecting the
        history up to ``pos`` (``ident``: the entry that caused it)."""
        self.pushes.setdefault((sid, seq), []).append((data, pos, ident))

    def client_acked(self, key: str, sid: str, upto: int, before: int) -> None:
        """A client saw its messages ``before+1 .. upto`` of session ``sid`` acknowledged."""
        v = self._view(sid, key)
        where = self.where.get(key, {})
        for seq in range(before + 1, upto + 1):
            self.acked.add((sid, seq))
            pos = where.get((sid, seq))
            if pos is None:
                if self.durability == "write-through":
                    self.fail(
                        "exactly-once",
                        f"write-through: {sid}#{seq} of {key!r} acknowledged but not in "
                        "the key's history",
                    )
                v.doomed = True
            elif v.top is None or pos > v.top[0]:
                v.top = (pos, (sid, seq))

    def delivered(self, key: str, sid: str, seq: int, data: Any) -> None:
        """The client's session ``sid`` received app data at server ``seq``."""
        v = self._view(sid, key)
        cands = [c for c in self.pushes.get((sid, seq), ()) if c[0] == data]
        if not cands:
            self.fail("delivery", f"{sid} received {data!r} at seq {seq}: never sent to it")
        if self.app == "counter":
            v.replies += 1
            pick = next((c for c in cands if c[2] == (sid, v.replies)), None)
            if pick is None:
                self.fail(
                    "delivery",
                    f"{sid}: reply {v.replies} is {data!r}, not the answer to its "
                    f"message {v.replies}",
                )
        elif v.last_pos is None:
            # A chat session's first message is the history, taken at its join.
            pick = next((c for c in cands if c[2] is None), None)
            if pick is None:
                self.fail("delivery", f"{sid}: first message {data!r} is not the history")
        else:
            want = v.last_pos + 1
            pick = next((c for c in cands if c[2] is not None and c[1] == want), None)
            if pick is None:
                self.fail(
                    "delivery",
                    f"{sid}: received {data!r} (position {[c[1] for c in cands]}), expected "
                    f"position {want}: a broadcast lost, duplicated or reordered",
                )
        assert pick is not None
        _, pos, ident = pick
        if ident is None:
            v.last_pos = pos - 1
            return
        if v.last_pos is not None and pos <= v.last_pos:
            self.fail(
                "no-silent-rollback", f"{sid} observed position {pos} of {key!r} after {v.last_pos}"
            )
        v.last_pos = pos
        if not self._in_history(key, pos, ident):
            v.doomed = True  # from a branch already dropped: it must not be resumed
        elif v.top is None or pos > v.top[0]:
            v.top = (pos, ident)

    def resumed(self, key: str, sid: str, node: str) -> None:
        """A node resumed session ``sid``: nothing its client saw may have been dropped."""
        v = self.sessions.get(sid)
        if v is None:
            return
        if v.doomed:
            self.fail(
                "no-silent-rollback",
                f"{node} resumed {sid} of {key!r}, whose client saw entries the history dropped",
            )
        if v.top is not None and not self._in_history(key, *v.top):
            pos, (s, q) = v.top
            self.fail(
                "no-silent-rollback",
                f"{node} resumed {sid} of {key!r}; its client saw {s}#{q} at position {pos}, "
                "no longer in the key's history",
            )
