"""The framework core of one backend node: keys, sessions, persistence, handoff. Sans-I/O.

The node owns the in-memory state of the keys routed to it. Everything here
runs on one event loop, one call at a time, so handlers of one key never race.
Sockets are not touched: a session talks to its connection through a
:class:`Wire`; the clock is injected.

**The serving rule.** The node serves key ``k`` (activates it, processes and
acknowledges its messages) only while all of these hold:

1. its lease is valid (the control plane renewed it recently; a standalone node
   in development mode has no lease);
2. it owns ``k``'s unit at an epoch ``E``: its table says so, or the gateway
   vouched for it with a signed claim at an epoch newer than the table's;
3. it has not handed ``k``'s unit off at ``E`` or later (a released unit is
   served again only when the table gives it back at a newer epoch);
4. the store accepts ``E`` (it holds no newer epoch for ``k``, nor another
   owner's record at ``E``).

A move is table-driven: ``release`` freezes the units (every key of them, in
memory or not) and flushes the keys in memory *for the new owner* at the new
epoch; the table update that follows is the commit (the unit is someone
else's: sessions close with 4000 "moved") or the abort (the unit comes back at
a newer epoch: frozen sessions resume where they stopped, their held messages
are processed in order). Nothing is frozen without an end: if neither comes,
the lease runs out and the node stops serving everything.

**Write-through** writes what changed, not the whole key: every change to a key
(a message processed, a session joining, leaving or ending, frames queued, acks)
marks the sessions it touched, and :meth:`Node.commit` appends one journal
entry per changed key (:mod:`backend.journal`) for all of them in one store
transaction (group commit; the I/O shell calls it once per event-loop turn through
``schedule_commit``). Until a key's changes are committed its connections write
nothing (:meth:`Node.output_held`): no ack, no reply, no welcome leaves before the
change it reports is stored. A failed append is not acknowledged: the key is
dropped and reloads from the store. The record is rewritten in full (and the
journal cleared) on a move, SIGTERM, a lost lease, deactivation, every
``checkpoint_s``, and when the journal would outgrow ``journal_max_bytes`` and the
record: compaction.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import orjson
import structlog

from backend.app import App, KeyContext, SessionHandle
from backend.config import BackendConfig
from backend.journal import SessionOp, encode_entry, replay
from backend.load import LoadMeter
from backend.store import Append, StaleEpoch, StateStore, StoreError
from clientlib.kernel.replay import Inbox, Outbox, OutboxFull
from clientlib.kernel.routing import SlotTable, Unit, slot_of
from clientlib.kernel.session_protocol import (
    CloseCode,
    CloseHint,
    Hello,
    Msg,
    Welcome,
)

__all__ = ["ActiveKey", "Node", "NotOwner", "Persisted", "Session", "Wire"]

log = structlog.get_logger("backend.node")

# Write-through: journals compacted at most this many per commit (for their size) and
# per sweep (for their age); the rest wait for the next. Removing a journal costs about
# what appending it did, and a burst of them stalls the event loop for every key.
COMPACTIONS_PER_TURN = 4


class Wire(Protocol):
    """A session's live connection, as the node needs it."""

    def wake(self) -> None:
        """Frames are waiting in the session's outbox (or an ack, or held input, is due)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a code from the protocol's table."""


class NotOwner(Exception):
    """This node does not (or no longer) serve the key at the epoch asked for."""


class Persisted(Enum):
    OK = "ok"
    FENCED = "fenced"  # a newer owner exists
    FAILED = "failed"  # the store could not write; nothing is known to be lost yet


@dataclass(eq=False, slots=True)
class Session:
    sid: str
    key: str
    outbox: Outbox
    inbox: Inbox
    wire: Wire | None = None
    written: int = 0  # highest outbox seq written to the current wire
    ack_sent: int = 0  # highest inbox seq acknowledged on the current wire
    detached_at: float | None = None
    # The outbox's last seq when the session last had a connection (all it held then may
    # have reached the client). It is stored with the session, so it holds on every node.
    # What is queued between connections is numbered after it, and a hello that saw more
    # than it saw it from a state since lost: those numbers may now be other messages.
    sent: int = 0

    def sent_bound(self) -> int:
        """The highest seq that may have reached the client (see ``sent``)."""
        return self.outbox.last_seq if self.wire is not None else self.sent

    def to_state(self) -> dict[str, Any]:
        return {"in": self.inbox.last, "out": self.outbox.to_state(), "sent": self.sent_bound()}


@dataclass(eq=False, slots=True)
class ActiveKey:
    ctx: KeyContext
    slot: int
    epoch: int  # the epoch this node serves (and writes) the key at
    sessions: dict[str, Session] = field(default_factory=dict)  # every resumable session
    frozen: bool = False  # handed off or stopping: messages are held, neither processed nor acked
    flushed_at: int = -1  # the release epoch its state was written at for the new owner
    dirty: bool = False
    idle_since: float | None = None
    # Write-through's journal. The sessions changed since the last commit, each with its
    # outbox's last seq when first touched (None: the session ended).
    touched: dict[str, tuple[Session | None, int]] = field(default_factory=dict)
    changed: bool = False  # changes not yet committed: the key's connections write nothing
    blocked: set[Wire] = field(default_factory=set)  # connections waiting for the commit
    record_epoch: int = -1  # the epoch of this node's own record in the store (-1: none)
    record_bytes: int = 0
    journal_bytes: int = 0  # appended since the record
    compacted_at: float = 0.0  # when its record was last written (write-through's sweep)
    phase: float = 0.0  # write-through: its sweep compactions fall at this offset in the period


class Node:
    def __init__(
        self,
        app: App,
        store: StateStore,
        meter: LoadMeter,
        config: BackendConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        new_sid: Callable[[], str] = lambda: secrets.token_urlsafe(12),
    ):
        self.app = app
        self.store = store
        self.meter = meter
        self.config = config
        self.node_id = config.node_id
        self.clock = clock
        self.new_sid = new_sid  # injected by the simulator, which needs repeatable ids
        self.keys: dict[str, ActiveKey] = {}
        # None: standalone development mode, owns every key and needs no lease.
        self.view: SlotTable | None = None
        self.lease_until = float("inf")
        self.released: dict[Unit, int] = {}  # unit → epoch it was handed off at
        self.stopping = False
        self.max_epoch_seen = 0
        self.held_bytes = 0  # raw input held by all connections (the node-wide budget)
        self._last_checkpoint = clock()
        self.journaling = config.durability == "write-through"
        self.pending: dict[str, ActiveKey] = {}  # keys with changes to commit
        # Write-through: called when the first change of a turn is pending; the I/O shell
        # runs commit() soon after (asyncio: call_soon). None: commit at once.
        self.schedule_commit: Callable[[], None] | None = None
        self._commit_scheduled = False
        self.stats = {
            "messages": 0,
            "duplicates": 0,
            "resumed": 0,
            "not_resumed": 0,
            "send_queue_full": 0,
            "stale_writes": 0,
            "store_errors": 0,
            "refused_not_owner": 0,
            "journal_appends": 0,
            "commits": 0,
            "compactions": 0,
        }

    # ------------------------------------------------------------------ ownership

    def join_control_plane(self) -> None:
        """From now on the node serves only under a lease and a table from the control plane."""
        self.view = SlotTable.empty()
        self.lease_until = float("-inf")

    def serving(self, now: float | None = None) -> bool:
        return not self.stopping and (self.clock() if now is None else now) < self.lease_until

    def serving_epoch(self, key: str, claimed: int | None = None) -> int:
        """Epoch to serve ``key`` at, or NotOwner. ``claimed``: the epoch of a route claim
        for this node that the gateway signed (None: no valid claim)."""
        if not self.serving():
            raise NotOwner("not serving: no valid lease" if not self.stopping else "stopping")
        view = self.view
        if view is None:
            return claimed or 0
        route = view.route(key)
        mine = route is not None and route.node == self.node_id
        epoch = route.epoch if route is not None and mine else -1
        if claimed is not None and (mine or route is None or claimed > route.epoch):
            # The gateway's table is newer than ours (or agrees) and routed here.
            epoch = max(epoch, claimed)
        if epoch < 0:
            owner = route.node if route is not None else None
            raise NotOwner(f"owned by {owner} at epoch {route.epoch if route else 0}")
        if self.released_epoch(key) >= epoch:
            raise NotOwner("handed off")
        return epoch

    def released_epoch(self, key: str) -> int:
        """The highest epoch ``key``'s unit was handed off at (-1: never)."""
        if not self.released:
            return -1
        rel = self.released.get(("key", key), -1)
        view = self.view
        if view is None or key not in view.overrides:
            rel = max(rel, self.released.get(("slot", slot_of(key)), -1))
        return rel

    def set_view(self, table: SlotTable) -> None:
        """A new table from the control plane: commit or abort moves, drop what is gone."""
        self.view = table
        me = self.node_id
        moved: list[ActiveKey] = []
        for key, ak in list(self.keys.items()):
            route = table.route(key)
            if route is not None and route.node == me:
                if route.epoch > ak.epoch:
                    ak.epoch = route.epoch  # a newer grant (an aborted move gives it back)
                if ak.frozen and not self.stopping and self.released_epoch(key) < ak.epoch:
                    self._thaw(ak)
            elif ak.frozen:
                moved.append(ak)  # handed off and committed: its state is with the new owner
            else:
                # Taken away without a handoff (this node was presumed dead): keep what
                # the store still accepts, then send the clients to the new owner.
                self.persist(ak)
                self._drop(ak, CloseCode.NOT_OWNER, "")
        if moved:
            sessions = sum(1 for ak in moved for s in ak.sessions.values() if s.wire is not None)
            hint = CloseHint(window_ms=self.moved_window_ms(sessions)).encode()
            for ak in moved:
                self._drop(ak, CloseCode.MOVED, hint)
        for unit, epoch in list(self.released.items()):
            if table.holder(unit)[1] > epoch:
                del self.released[unit]  # the table has moved past it: it decides from here

    def grant_lease(self, until: float) -> None:
        if until > self.lease_until:
            self.lease_until = until

    def lease_lost(self) -> None:
        """The control plane has not renewed the lease: stop serving before it reassigns.

        Whatever is in memory is written first (at this node's epochs: the store
        refuses it if a new owner already wrote), so a control-plane outage loses
        nothing in any durability mode.
        """
        self.lease_until = float("-inf")
        if not self.keys:
            return
        log.warning("lease_lost", keys=len(self.keys))
        hint = CloseHint(window_ms=1000).encode()
        for ak in list(self.keys.values()):
            ak.frozen = True
            self.persist(ak)
            self._drop(ak, CloseCode.SERVICE_RESTART, hint)

    # ------------------------------------------------------------------ keys

    def activate(self, key: str, epoch: int) -> ActiveKey:
        """The key's state, in memory, to serve at ``epoch`` (the upgrade's check)."""
        # The serving rule again, in full: between an upgrade's check and its hello a
        # lease may run out, a release come in, or the table move the key elsewhere (and
        # on again, so the release is forgotten). The upgrade's epoch counts as a claim.
        # A key in memory too: a node that stalled past its lease holds its keys until
        # its next tick drops them.
        epoch = self.serving_epoch(key, epoch)
        ak = self.keys.get(key)
        if ak is not None:
            if ak.frozen:
                raise NotOwner(f"key {key!r} is being handed off")
            if epoch > ak.epoch:
                ak.epoch = epoch
            return ak
        # The one place a key comes to life.
        try:
            loaded = self.store.load(key)
        except StoreError as exc:
            self.stats["store_errors"] += 1
            raise NotOwner(f"state store unavailable: {exc}") from None
        state: Any = None
        sessions: dict[str, Any] = {}
        if loaded is not None:
            self.max_epoch_seen = max(self.max_epoch_seen, loaded.epoch)
            if loaded.epoch > epoch or (
                loaded.epoch == epoch and loaded.owner not in ("", self.node_id)
            ):
                self.stats["refused_not_owner"] += 1
                raise NotOwner(f"store holds epoch {loaded.epoch} of {loaded.owner!r}")
            obj = orjson.loads(loaded.blob)
            if loaded.journal:
                replay(obj, loaded.journal)
            state = self.app.load_state(key, obj["state"])
            sessions = obj.get("sessions", {})
        else:
            state = self.app.initial_state(key)
        members: dict[str, Session] = {}
        ak = ActiveKey(KeyContext(key, state, self._send, members), slot_of(key), epoch, members)
        # Keys compact their journals every checkpoint_s, each at its own phase (by slot),
        # so that the sweeps spread the record writes instead of doing them all at once.
        ak.phase = (ak.slot % 997) / 997 * self.config.checkpoint_s
        ak.compacted_at = self.clock()
        if loaded is not None and loaded.owner == self.node_id:
            ak.record_epoch = loaded.epoch
            ak.record_bytes = len(loaded.blob)
            ak.journal_bytes = sum(len(e) for e in loaded.journal)
        for sid, s in sessions.items():
            out = Outbox.from_state(
                s["out"],
                max_count=self.config.replay_max_count,
                max_bytes=self.config.replay_max_bytes,
            )
            members[sid] = Session(
                sid,
                key,
                out,
                Inbox(int(s["in"])),
                detached_at=self.clock(),
                sent=int(s.get("sent", out.last_seq)),  # records written before "sent"
            )
        if self.view is not None and (loaded is None or loaded.epoch < epoch):
            # Claim the key at its epoch before acting on it: from now on the store refuses
            # every older owner's write (one that stalled past its lease, say, and wakes up
            # to write what it held), so a history this node builds on is never overwritten.
            result = self.persist(ak)
            if result is not Persisted.OK:
                raise NotOwner(f"could not claim {key!r} at epoch {epoch}: {result.value}")
        self.keys[key] = ak
        return ak

    def persist(
        self, ak: ActiveKey, epoch: int | None = None, owner: str | None = None
    ) -> Persisted:
        """Write a key's state and sessions at ``epoch`` for ``owner`` (default: its own)."""
        blob = orjson.dumps(
            {
                "state": self.app.dump_state(ak.ctx.state),
                "sessions": {sid: s.to_state() for sid, s in ak.sessions.items()},
            }
        )
        at = ak.epoch if epoch is None else epoch
        owner = owner or self.node_id
        try:
            self.store.save(ak.ctx.key, at, owner, blob)
        except StaleEpoch as exc:
            self.stats["stale_writes"] += 1
            log.warning("stale_write", key=ak.ctx.key, epoch=exc.epoch, stored=exc.stored)
            return Persisted.FENCED
        except StoreError as exc:
            self.stats["store_errors"] += 1
            log.error("store_write_failed", key=ak.ctx.key, error=str(exc))
            return Persisted.FAILED
        ak.dirty = False
        # The record holds everything: the journal is gone, what was pending is stored.
        ak.record_epoch = at if owner == self.node_id else -1
        ak.record_bytes = len(blob)
        ak.compacted_at = self.clock()
        if ak.journal_bytes:
            self.stats["compactions"] += 1
        ak.journal_bytes = 0
        self._synced(ak)
        return Persisted.OK

    # ------------------------------------------------------------------ write-through

    def _touch(self, ak: ActiveKey, session: Session) -> None:
        """Write-through: ``session`` is about to change (its entry goes in the journal)."""
        if session.sid not in ak.touched:
            ak.touched[session.sid] = (session, session.outbox.last_seq)

    def _gone(self, ak: ActiveKey, sid: str) -> None:
        """Write-through: session ``sid`` ended; the next commit says so."""
        ak.touched[sid] = (None, 0)
        self._changed(ak)

    def _changed(self, ak: ActiveKey) -> None:
        """Write-through: ``ak`` has changes; nothing of it is written out until they are
        committed."""
        ak.changed = True
        key = ak.ctx.key
        if self.pending.get(key) is not ak:
            self.pending[key] = ak
        if self.schedule_commit is None:
            self.commit()
        elif not self._commit_scheduled:
            self._commit_scheduled = True
            self.schedule_commit()

    def _synced(self, ak: ActiveKey) -> None:
        """The key's changes are stored: release the output they held."""
        ak.touched.clear()
        if ak.changed:
            ak.changed = False
            blocked, ak.blocked = ak.blocked, set()
            for wire in blocked:
                wire.wake()

    def output_held(self, session: Session, wire: Wire) -> bool:
        """True if ``wire`` must write nothing now: its key has uncommitted changes (it
        is woken when they are committed)."""
        if not self.journaling:
            return False
        ak = self.keys.get(session.key)
        if ak is None or not ak.changed:
            return False
        ak.blocked.add(wire)
        return True

    def _entry(self, ak: ActiveKey) -> bytes:
        ops: dict[str, SessionOp] = {}
        for sid, (s, mark) in ak.touched.items():
            if s is None:
                ops[sid] = None
                continue
            box = s.outbox
            after = max(mark, box.acked)
            ops[sid] = [s.inbox.last, box.acked, s.sent_bound(), after + 1, box.texts_after(after)]
        return encode_entry(self.app.dump_state(ak.ctx.state), ops)

    def commit(self) -> None:
        """Write-through's group commit: one journal entry per changed key, all in one
        store transaction; then the output the changes held goes out. A key whose entry
        is refused (a newer owner) or not written (store error) is dropped."""
        self._commit_scheduled = False
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        batch: list[Append] = []
        appended: list[ActiveKey] = []
        limit = self.config.journal_max_bytes
        budget = COMPACTIONS_PER_TURN
        for key, ak in pending.items():
            if not ak.changed or self.keys.get(key) is not ak:
                continue
            try:
                entry = self._entry(ak)
                full = ak.journal_bytes + len(entry) > max(limit, ak.record_bytes)
                if ak.record_epoch != ak.epoch or (full and budget > 0):
                    # No record of ours at this epoch to append to, or a journal as big
                    # as the record: write the record (compaction).
                    if full:
                        budget -= 1
                    self._settle(ak, self.persist(ak))
                    continue
            except Exception:
                # The app's state would not serialize: nothing of it can be stored, so
                # nothing is acknowledged (the key reloads from what was).
                log.exception("commit_failed", key=key)
                self._drop(ak, CloseCode.INTERNAL_ERROR, "")
                continue
            batch.append((key, ak.epoch, self.node_id, entry))
            appended.append(ak)
        if not batch:
            return
        self.stats["commits"] += 1
        try:
            results: list[StaleEpoch | None] = self.store.append_journal(batch)
        except StoreError as exc:
            self.stats["store_errors"] += 1
            log.error("store_write_failed", keys=len(batch), error=str(exc))
            for ak in appended:
                self._settle(ak, Persisted.FAILED)
            return
        for ak, (_, _, _, entry), res in zip(appended, batch, results, strict=True):
            if res is None:
                self.stats["journal_appends"] += 1
                ak.journal_bytes += len(entry)
                ak.dirty = False
                self._synced(ak)
            else:
                self.stats["stale_writes"] += 1
                log.warning("stale_write", key=ak.ctx.key, epoch=res.epoch, stored=res.stored)
                self._settle(ak, Persisted.FENCED)

    def _settle(self, ak: ActiveKey, result: Persisted) -> None:
        """After a write-through write of ``ak``: a change not stored is not acknowledged;
        the key is forgotten (its clients reconnect, it reloads from the store)."""
        if result is Persisted.FENCED:
            self._drop(ak, CloseCode.NOT_OWNER, "")
        elif result is Persisted.FAILED:
            self._drop(ak, CloseCode.INTERNAL_ERROR, "")

    # ------------------------------------------------------------------ sessions

    def attach(self, key: str, epoch: int, hello: Hello, wire: Wire) -> tuple[Session, Welcome]:
        ak = self.activate(key, epoch)
        resumed = False
        session = ak.sessions.get(hello.sid) if hello.sid else None
        if session is not None:
            if (
                hello.ack > session.inbox.last  # we processed less than we once acknowledged
                or hello.last < session.outbox.acked  # the client lost what it acknowledged
                or hello.last > session.sent_bound()  # the client saw what we never sent it
            ):
                # State was lost (a crash in a mode that had not saved it): cannot resume.
                del ak.sessions[session.sid]
                if session.wire is not None:
                    # A connection still carries it: the session it serves is gone, so it
                    # ends as a taken-over session does (4503), not silently.
                    ak.ctx.sessions.pop(session.sid, None)
                    if not ak.frozen:
                        self.app.on_leave(ak.ctx, session)
                    session.wire.close(CloseCode.SESSION_CONFLICT, "")
                    session.wire = None
                if self.journaling:
                    ak.touched[session.sid] = (None, 0)
                session = None
            else:
                if self.journaling:
                    self._touch(ak, session)
                session.outbox.ack(hello.last)
                resumed = True
        if session is None:
            session = Session(
                self.new_sid(),
                key,
                Outbox(
                    max_count=self.config.replay_max_count, max_bytes=self.config.replay_max_bytes
                ),
                Inbox(),
            )
            ak.sessions[session.sid] = session
            if self.journaling:
                self._touch(ak, session)
        elif session.wire is not None:
            session.wire.close(CloseCode.SESSION_CONFLICT, "")  # the same session twice
        self.stats["resumed" if resumed else "not_resumed"] += 1
        session.wire = wire
        session.detached_at = None
        session.written = session.outbox.acked  # everything unacked is resent on this wire
        session.ack_sent = 0
        ak.idle_since = None
        ak.ctx.sessions[session.sid] = session
        self.app.on_join(ak.ctx, session, resumed)
        ak.dirty = True
        if self.journaling:
            self._changed(ak)
            if self.keys.get(key) is not ak:  # committed at once, and the write failed
                raise NotOwner("could not write the new session")
        wire.wake()
        return session, Welcome(session.sid, resumed, session.inbox.last)

    def detach(self, session: Session, wire: Wire) -> None:
        """The connection ended; the session stays resumable for ``session_ttl_s``."""
        if session.wire is not wire:
            return  # already replaced by a newer connection of the same session
        session.wire = None
        session.sent = session.outbox.last_seq
        session.detached_at = self.clock()
        ak = self.keys.get(session.key)
        if ak is None:
            return
        ak.ctx.sessions.pop(session.sid, None)
        if not ak.frozen:
            self.app.on_leave(ak.ctx, session)
            if self.journaling:
                self._changed(ak)  # what on_leave changed
        if not ak.ctx.sessions:
            ak.idle_since = self.clock()

    def end(self, session: Session, wire: Wire) -> None:
        """The client closed with 1000: the session is over and is forgotten."""
        self.detach(session, wire)
        ak = self.keys.get(session.key)
        if ak is not None and ak.sessions.get(session.sid) is session:
            del ak.sessions[session.sid]
            ak.dirty = True
            if self.journaling:
                self._gone(ak, session.sid)

    def can_process(self, session: Session) -> bool:
        """True if the session's next message may be processed now (else it is held)."""
        ak = self.keys.get(session.key)
        if ak is None or ak.frozen:
            return False
        if self.clock() >= self.lease_until:
            self.lease_lost()
            return False
        out = session.outbox
        # Below half the replay buffer: room for replies to more input.
        return len(out) * 2 < out.max_count and out.bytes * 2 < out.max_bytes

    def process(self, session: Session, msg: Msg) -> None:
        """Deliver a msg (its ack already applied) after :meth:`can_process` said yes."""
        ak = self.keys[session.key]
        if not session.inbox.accept(msg.seq):
            self.stats["duplicates"] += 1
            return
        journaling = self.journaling
        if journaling:
            self._touch(ak, session)
        t0 = time.perf_counter()
        self.app.on_message(ak.ctx, session, msg.data)
        self.meter.record(session.key, ak.slot, time.perf_counter() - t0)
        self.stats["messages"] += 1
        ak.dirty = True
        if journaling:
            # Not acknowledged before it is committed; if the commit fails, the in-memory
            # change is forgotten with the key (it reloads from the store) and the client
            # resends.
            self._changed(ak)
            if self.keys.get(session.key) is not ak:
                return
        if session.wire is not None:
            session.wire.wake()

    def receive(self, session: Session, msg: Msg) -> bool:
        """Apply a msg's ack and process it if it may be; False: the caller holds it."""
        self.receive_ack(session, msg.ack)
        if not self.can_process(session):
            return False
        self.process(session, msg)
        return True

    def receive_ack(self, session: Session, upto: int) -> None:
        """Apply a client's cumulative ack (write-through: it goes in the next entry)."""
        if self.journaling and upto > session.outbox.acked:
            ak = self.keys.get(session.key)
            if ak is not None:
                self._touch(ak, session)
        session.outbox.ack(upto)

    def _send(self, handle: SessionHandle, data: Any) -> None:
        session = handle if isinstance(handle, Session) else None
        if session is None:
            raise TypeError("send() needs a session from this node")
        if self.journaling:
            ak = self.keys.get(session.key)
            if ak is not None:
                self._touch(ak, session)
        try:
            session.outbox.push(orjson.dumps(data))
        except OutboxFull:
            # Replay buffer full: the client is not acking. Dropping would break
            # exactly-once, so the session ends and cannot be resumed (explicitly).
            self.stats["send_queue_full"] += 1
            ak = self.keys.get(session.key)
            if ak is not None:
                ak.sessions.pop(session.sid, None)
                ak.ctx.sessions.pop(session.sid, None)
                if self.journaling:
                    self._gone(ak, session.sid)
            if session.wire is not None:
                session.wire.close(CloseCode.SEND_QUEUE_FULL, "")
            return
        if session.wire is not None:
            session.wire.wake()

    def _drop(self, ak: ActiveKey, code: int, reason: str) -> None:
        """Forget a key (its clients reconnect: to the new owner, or to reload it)."""
        if self.keys.get(ak.ctx.key) is ak:
            del self.keys[ak.ctx.key]
        if self.pending.get(ak.ctx.key) is ak:
            del self.pending[ak.ctx.key]
        ak.blocked.clear()
        self.meter.forget(ak.ctx.key)
        for s in ak.sessions.values():
            if s.wire is not None:
                s.wire.close(code, reason)

    def _thaw(self, ak: ActiveKey) -> None:
        ak.frozen = False
        ak.flushed_at = -1
        for s in ak.sessions.values():
            if s.wire is not None:
                s.wire.wake()  # held input is processed now, in order

    # ------------------------------------------------------------------ handoff

    def keys_in(self, units: list[Unit]) -> list[ActiveKey]:
        """The active keys of these units (a slot's keys that have their own unit excluded)."""
        slots = {int(u) for kind, u in units if kind == "slot"}
        names = {str(u) for kind, u in units if kind == "key"}
        overrides = self.view.overrides if self.view is not None else {}
        return [
            ak
            for k, ak in self.keys.items()
            if k in names or (ak.slot in slots and k not in overrides)
        ]

    def release(self, epoch: int, targets: list[tuple[Unit, str]]) -> tuple[int, str]:
        """Step 1 of a move: freeze the units (no key of them activates from now on) and
        write their keys in memory at ``epoch`` for their new owners. Idempotent.
        Returns (keys flushed, error: empty when every write succeeded)."""
        flushed, errors = 0, []
        for unit, dst in targets:
            if self.view is not None and self.view.holder(unit)[1] >= epoch:
                continue  # the table has moved past this move (committed or aborted): stale
            if self.released.get(unit, 0) < epoch:
                self.released[unit] = epoch
            for ak in self.keys_in([unit]):
                ak.frozen = True
                if ak.flushed_at == epoch:
                    # Written already and frozen since: a repeated order must not write it
                    # again, as the new owner may have taken over and written since.
                    flushed += 1
                    continue
                result = self.persist(ak, epoch, dst)
                if result is Persisted.OK:
                    ak.flushed_at = epoch
                    flushed += 1
                else:
                    errors.append(f"{ak.ctx.key}: {result.value}")
        return flushed, "; ".join(errors)[:200]

    def stop(self) -> int:
        """SIGTERM: serve nothing new, freeze every key and write it. Returns keys written."""
        self.stopping = True
        written = 0
        for ak in self.keys.values():
            ak.frozen = True
            if self.persist(ak) is Persisted.OK:
                written += 1
        return written

    def close_all(self, code: int, reason: str) -> int:
        """Close every live session (shutdown); returns how many."""
        n = 0
        for ak in list(self.keys.values()):
            for s in ak.sessions.values():
                if s.wire is not None:
                    s.wire.close(code, reason)
                    n += 1
        return n

    def moved_window_ms(self, sessions: int) -> int:
        """Spread reconnects so they arrive at most ``reconnect_rate`` per second, within
        [100 ms, moved_window_ms]: a few clients come back at once, ten thousand do not."""
        cfg = self.config
        want = sessions * 1000 // max(cfg.reconnect_rate, 1)
        return int(min(max(want, 100), cfg.moved_window_ms))

    # ------------------------------------------------------------------ housekeeping

    def sweep(self, now: float) -> None:
        """Expire detached sessions, checkpoint, and drop idle keys (called every second)."""
        cfg = self.config
        if self.view is not None and self.keys and now >= self.lease_until:
            self.lease_lost()
        checkpoint = cfg.durability == "checkpoint" and now - self._last_checkpoint >= (
            cfg.checkpoint_s
        )
        if checkpoint:
            self._last_checkpoint = now
        budget = COMPACTIONS_PER_TURN
        period = cfg.checkpoint_s
        for key, ak in list(self.keys.items()):
            if ak.frozen:
                continue
            for sid, s in list(ak.sessions.items()):
                if (
                    s.wire is None
                    and s.detached_at is not None
                    and now - s.detached_at > cfg.session_ttl_s
                ):
                    del ak.sessions[sid]
                    ak.dirty = True
                    if self.journaling:
                        self._gone(ak, sid)
            if self.keys.get(key) is not ak:
                continue  # its commit failed: dropped
            if self.journaling:
                # Write-through compacts a key's journal once a period has turned since its
                # record was written, at the key's own phase (see activate), a few a sweep.
                due = (
                    budget > 0
                    and ak.journal_bytes > 0
                    and (now + ak.phase) // period > (ak.compacted_at + ak.phase) // period
                )
                budget -= due
            else:
                due = ak.dirty and checkpoint
            if due and self.persist(ak) is Persisted.FENCED:
                self._drop(ak, CloseCode.NOT_OWNER, "")
                continue
            if (
                not ak.ctx.sessions
                and ak.idle_since is not None
                and now - ak.idle_since > cfg.key_idle_s
            ):
                unsaved = ak.dirty or ak.journal_bytes > 0 or ak.changed
                result = self.persist(ak) if unsaved else Persisted.OK
                if result is not Persisted.FAILED:
                    del self.keys[key]
                    self.meter.forget(key)

    def flush_all(self) -> int:
        return sum(1 for ak in list(self.keys.values()) if self.persist(ak) is Persisted.OK)

    @property
    def session_count(self) -> int:
        return sum(len(ak.ctx.sessions) for ak in self.keys.values())

    def owned_units(self) -> dict[str, int]:
        """Keys active here with their epochs (reported when registering)."""
        return {k: ak.epoch for k, ak in self.keys.items()}
