"""The framework core of one backend node: keys, sessions, persistence, handoff.

The node owns the in-memory state of the keys routed to it. Everything here
runs on the event loop, one call at a time, so handlers of one key never
race. Sockets are not touched: a session talks to its connection through a
:class:`Wire` (the server module supplies a websockets-backed one).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog

from backend.app import App, KeyContext, SessionHandle
from backend.config import BackendConfig
from backend.load import LoadMeter
from backend.store import StaleEpoch, StateStore
from clientlib.kernel.replay import Inbox, Outbox, OutboxFull
from clientlib.kernel.routing import SlotTable, slot_of
from clientlib.kernel.session_protocol import (
    CloseCode,
    CloseHint,
    Hello,
    Msg,
    ProtocolError,
    Welcome,
)

__all__ = [
    "ActiveKey",
    "Node",
    "NotOwner",
    "Session",
    "Wire",
]

log = structlog.get_logger("backend.node")


class Wire(Protocol):
    """A session's live connection, as the node needs it."""

    def wake(self) -> None:
        """Frames are waiting in the session's outbox (or an ack is due)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a code from the protocol's table."""


class NotOwner(Exception):
    """This node does not (or no longer) own the key at the epoch asked for."""


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

    def to_state(self) -> dict[str, Any]:
        return {"in": self.inbox.last, "out": self.outbox.to_state()}


@dataclass(eq=False, slots=True)
class ActiveKey:
    ctx: KeyContext
    slot: int
    epoch: int
    sessions: dict[str, Session] = field(default_factory=dict)
    frozen: bool = False  # being handed off: messages are not processed (nor acked)
    dirty: bool = False
    idle_since: float | None = None


class Node:
    def __init__(
        self,
        app: App,
        store: StateStore,
        meter: LoadMeter,
        config: BackendConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.app = app
        self.store = store
        self.meter = meter
        self.config = config
        self.clock = clock
        self.keys: dict[str, ActiveKey] = {}
        self.view: SlotTable | None = None  # None: standalone, owns every key
        self._last_checkpoint = clock()
        self.stats = {
            "messages": 0,
            "duplicates": 0,
            "resumed": 0,
            "not_resumed": 0,
            "send_queue_full": 0,
            "stale_writes": 0,
            "refused_not_owner": 0,
        }

    # ------------------------------------------------------------------ ownership

    def check_owner(self, key: str, slot: int | None, epoch: int | None) -> int:
        """Epoch to serve ``key`` at, or raise NotOwner (the server answers 421)."""
        ak = self.keys.get(key)
        if ak is not None and ak.frozen:
            raise NotOwner(f"key {key!r} is being handed off")
        view = self.view
        if view is None or epoch is None:
            return epoch or 0
        if slot is not None and slot != slot_of(key, view.num_slots):
            raise NotOwner("slot header does not match the key")
        route = view.route(key)
        if route is None:
            raise NotOwner("no owner known")
        if epoch > route.epoch:
            return epoch  # the gateway's table is newer than ours: it routed here, trust it
        if route.node != self.config.node_id or epoch < route.epoch:
            raise NotOwner(f"owned by {route.node} at epoch {route.epoch}")
        return epoch

    # ------------------------------------------------------------------ keys

    def activate(self, key: str, epoch: int) -> ActiveKey:
        ak = self.keys.get(key)
        if ak is not None:
            if epoch > ak.epoch:
                ak.epoch = epoch
            return ak
        loaded = self.store.load(key)
        state: Any = None
        sessions: dict[str, Any] = {}
        if loaded is not None:
            stored_epoch, blob = loaded
            if stored_epoch > epoch:
                self.stats["refused_not_owner"] += 1
                raise NotOwner(f"store holds epoch {stored_epoch} > {epoch}")
            obj = orjson.loads(blob)
            state = self.app.load_state(key, obj["state"])
            sessions = obj.get("sessions", {})
        else:
            state = self.app.initial_state(key)
        ak = ActiveKey(KeyContext(key, state, self._send), slot_of(key), epoch)
        for sid, s in sessions.items():
            out = Outbox.from_state(
                s["out"],
                max_count=self.config.replay_max_count,
                max_bytes=self.config.replay_max_bytes,
            )
            ak.sessions[sid] = Session(sid, key, out, Inbox(int(s["in"])), detached_at=self.clock())
        self.keys[key] = ak
        return ak

    def persist(self, ak: ActiveKey, epoch: int | None = None) -> bool:
        """Write a key's state and sessions; False if a newer owner fenced us off."""
        blob = orjson.dumps(
            {
                "state": self.app.dump_state(ak.ctx.state),
                "sessions": {sid: s.to_state() for sid, s in ak.sessions.items()},
            }
        )
        try:
            self.store.save(ak.ctx.key, ak.epoch if epoch is None else epoch, blob)
        except StaleEpoch as exc:
            self.stats["stale_writes"] += 1
            log.warning("stale_write", key=ak.ctx.key, epoch=exc.epoch, stored=exc.stored)
            return False
        ak.dirty = False
        return True

    # ------------------------------------------------------------------ sessions

    def attach(self, key: str, epoch: int, hello: Hello, wire: Wire) -> tuple[Session, Welcome]:
        ak = self.activate(key, epoch)
        if ak.frozen:
            raise NotOwner(f"key {key!r} is being handed off")
        resumed = False
        session = ak.sessions.get(hello.sid) if hello.sid else None
        if session is not None:
            try:
                session.outbox.ack(hello.last)
                resumed = True
            except ProtocolError:
                # The client saw more than we kept (state lost in a crash): cannot resume.
                del ak.sessions[session.sid]
                session = None
        if session is None:
            session = Session(
                secrets.token_urlsafe(12),
                key,
                Outbox(
                    max_count=self.config.replay_max_count, max_bytes=self.config.replay_max_bytes
                ),
                Inbox(),
            )
            ak.sessions[session.sid] = session
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
        if self.config.durability == "write-through":
            self.persist(ak)
        wire.wake()
        return session, Welcome(session.sid, resumed, session.inbox.last)

    def detach(self, session: Session, wire: Wire) -> None:
        if session.wire is not wire:
            return  # already replaced by a newer connection of the same session
        session.wire = None
        session.detached_at = self.clock()
        ak = self.keys.get(session.key)
        if ak is None:
            return
        ak.ctx.sessions.pop(session.sid, None)
        if not ak.frozen:
            self.app.on_leave(ak.ctx, session)
        if not ak.ctx.sessions:
            ak.idle_since = self.clock()

    def receive(self, session: Session, msg: Msg) -> None:
        """A msg envelope from a session's client. ProtocolError for a bad ack or seq."""
        session.outbox.ack(msg.ack)
        self.process(session, msg)

    def process(self, session: Session, msg: Msg) -> None:
        """Deliver a msg whose ack was already applied (the server's hot path)."""
        ak = self.keys.get(session.key)
        if ak is None or ak.frozen:
            return  # not processed, so not acked: the client resends it to the new owner
        if not session.inbox.accept(msg.seq):
            self.stats["duplicates"] += 1
            return
        t0 = time.perf_counter()
        self.app.on_message(ak.ctx, session, msg.data)
        self.meter.record(session.key, ak.slot, time.perf_counter() - t0)
        self.stats["messages"] += 1
        ak.dirty = True
        if self.config.durability == "write-through" and not self.persist(ak):
            self._lose_key(ak)
            return
        if session.wire is not None:
            session.wire.wake()

    @staticmethod
    def has_room(session: Session) -> bool:
        """Below half the replay buffer: room for replies to more input."""
        out = session.outbox
        return len(out) * 2 < out.max_count and out.bytes * 2 < out.max_bytes

    def receive_ack(self, session: Session, upto: int) -> None:
        session.outbox.ack(upto)

    def _send(self, handle: SessionHandle, data: Any) -> None:
        session = handle if isinstance(handle, Session) else None
        if session is None:
            raise TypeError("send() needs a session from this node")
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
            if session.wire is not None:
                session.wire.close(CloseCode.SEND_QUEUE_FULL, "")
            return
        if session.wire is not None:
            session.wire.wake()

    def _lose_key(self, ak: ActiveKey) -> None:
        """A newer owner exists: drop the key and send its clients there."""
        self.keys.pop(ak.ctx.key, None)
        self.meter.forget(ak.ctx.key)
        for s in ak.sessions.values():
            if s.wire is not None:
                s.wire.close(CloseCode.NOT_OWNER, "")

    # ------------------------------------------------------------------ handoff

    def keys_of(self, units: Iterable[tuple[str, int | str]]) -> list[ActiveKey]:
        slots = {u for kind, u in units if kind == "slot"}
        names = {u for kind, u in units if kind == "key"}
        return [ak for k, ak in self.keys.items() if ak.slot in slots or k in names]

    def release(self, units: list[tuple[str, int | str]], epoch: int) -> int:
        """Step 1 of a move: freeze the units' keys and flush them at the new epoch."""
        flushed = 0
        for ak in self.keys_of(units):
            ak.frozen = True
            ak.epoch = max(ak.epoch, epoch)
            if self.persist(ak, epoch):
                flushed += 1
        return flushed

    def commit_release(self, units: list[tuple[str, int | str]]) -> int:
        """Step 3: the new owner is committed; close the sessions with "moved"."""
        moved = self.keys_of(units)
        sessions = sum(1 for ak in moved for s in ak.sessions.values() if s.wire is not None)
        hint = CloseHint(window_ms=self.moved_window_ms(sessions)).encode()
        closed = 0
        for ak in moved:
            self.keys.pop(ak.ctx.key, None)
            self.meter.forget(ak.ctx.key)
            for s in ak.sessions.values():
                if s.wire is not None:
                    s.wire.close(CloseCode.MOVED, hint)
                    closed += 1
        return closed

    def moved_window_ms(self, sessions: int) -> int:
        """Spread reconnects so they arrive at most ``reconnect_rate`` per second, within
        [100 ms, moved_window_ms]: a few clients come back at once, ten thousand do not."""
        cfg = self.config
        want = sessions * 1000 // max(cfg.reconnect_rate, 1)
        return int(min(max(want, 100), cfg.moved_window_ms))

    def abort_release(self, units: list[tuple[str, int | str]]) -> None:
        """The move failed: keep the units (at the epoch they were flushed with)."""
        for ak in self.keys_of(units):
            ak.frozen = False
            for s in ak.sessions.values():
                if s.wire is not None:
                    s.wire.wake()

    # ------------------------------------------------------------------ housekeeping

    def sweep(self, now: float) -> None:
        """Expire detached sessions, checkpoint, and drop idle keys (called every second)."""
        cfg = self.config
        checkpoint = cfg.durability == "checkpoint" and now - self._last_checkpoint >= (
            cfg.checkpoint_s
        )
        if checkpoint:
            self._last_checkpoint = now
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
            if ak.dirty and checkpoint:
                self.persist(ak)
            if (
                not ak.ctx.sessions
                and ak.idle_since is not None
                and now - ak.idle_since > cfg.key_idle_s
            ) and (not ak.dirty or self.persist(ak)):
                del self.keys[key]

    def flush_all(self) -> None:
        for ak in list(self.keys.values()):
            self.persist(ak)

    @property
    def session_count(self) -> int:
        return sum(len(ak.ctx.sessions) for ak in self.keys.values())

    def owned_units(self) -> dict[str, int]:
        """Keys active here with their epochs (reported when re-registering)."""
        return {k: ak.epoch for k, ak in self.keys.items()}
