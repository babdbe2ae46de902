"""One client connection's session, sans-I/O: frames in, frames to write out.

The server feeds each WebSocket message to :meth:`SessionConn.receive` and
writes what :meth:`SessionConn.frames_due` returns; the node talks back
through the :class:`~backend.node.Wire` methods (``wake``, ``close``), which
only record what is wanted and call ``notify`` so the I/O shell acts on it.
The simulator drives the same class without sockets.

Input that cannot be processed yet (the key is frozen by a move, or the
session's replay buffer is half full: the client is not reading) is **held raw**,
in order, and processed when the node wakes the connection. Holding raw bytes
bounds what a client can make the node keep: a message's decoded form may be
twenty times its size, its bytes are not. The bound is per connection
(``max_held_bytes``: beyond it, 4001) and per node (``node_held_bytes``: beyond
it, 1013 with a retry hint), so one client never runs a node out of memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import structlog

from backend.node import Node, NotOwner, Session
from clientlib.kernel.replay import due_frames
from clientlib.kernel.session_protocol import (
    Ack,
    CloseCode,
    CloseHint,
    Hello,
    Msg,
    ProtocolError,
    decode,
    encode,
)

__all__ = ["SessionConn", "json_items"]

log = structlog.get_logger("backend.session")

Raw = bytes | str

# Messages below this size are not counted: they cannot build much.
ITEM_CHECK_MIN = 16 * 1024


def json_items(raw: Raw) -> int:
    """An upper bound on the values a JSON text decodes to (separators and openers)."""
    if isinstance(raw, str):
        return raw.count(",") + raw.count("[") + raw.count("{") + 1
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


class SessionConn:
    __slots__ = (
        "closing",
        "deferred",
        "epoch",
        "gone",
        "held",
        "held_bytes",
        "key",
        "max_held_bytes",
        "max_items",
        "node",
        "node_held_bytes",
        "notify",
        "queued_bytes",
        "session",
        "welcome",
    )

    def __init__(
        self,
        node: Node,
        key: str,
        epoch: int,
        notify: Callable[[], None],
        *,
        max_held_bytes: int = 1 << 20,
        node_held_bytes: int = 64 << 20,
        max_items: int = 65536,
    ):
        self.node = node
        self.key = key
        self.epoch = epoch
        self.notify = notify
        self.max_held_bytes = max_held_bytes
        self.max_items = max_items
        self.node_held_bytes = node_held_bytes
        self.session: Session | None = None
        self.welcome: bytes | None = None
        self.held: deque[Raw] = deque()
        self.held_bytes = 0
        self.queued_bytes = 0  # input waiting in the node's service queue (the I/O shell's)
        self.closing: tuple[int, str] | None = None
        self.gone = False  # the connection ended: input still queued for it is dropped
        self.deferred = False  # inside receive(): the caller writes right after

    # ------------------------------------------------------------------ Wire

    def wake(self) -> None:
        if not self.deferred:
            self.notify()

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self.notify()

    # ------------------------------------------------------------------ input

    def receive(self, raw: Raw) -> None:
        """One WebSocket message from the client. A protocol violation becomes a
        close request (4502), never an exception."""
        if self.closing is not None:
            return
        if len(raw) > ITEM_CHECK_MIN and json_items(raw) > self.max_items:
            # A message's decoded form can be fifty times its size (a megabyte of "[],"
            # is 350,000 lists): count what it would build before building it.
            self.close(CloseCode.MESSAGE_TOO_BIG, "")
            return
        self.deferred = True
        try:
            session = self.session
            if session is None:
                self._hello(raw)
                return
            env = decode(raw)
            if type(env) is Msg:
                self.node.receive_ack(session, env.ack)
                if not self.held and self.node.can_process(session):  # the common case
                    self.node.process(session, env)
                else:
                    self._hold(raw)
            elif type(env) is Ack:
                self.node.receive_ack(session, env.ack)
                if self.held:
                    self.pump()  # an ack may have made room for held input
            else:
                raise ProtocolError("unexpected envelope after hello")
        except ProtocolError as exc:
            log.info("session_protocol_violation", error=str(exc))
            self.close(CloseCode.SESSION_PROTOCOL_VIOLATION, "")
        finally:
            self.deferred = False

    def _hello(self, raw: Raw) -> None:
        hello = decode(raw)
        if not isinstance(hello, Hello):
            raise ProtocolError("first envelope must be hello")
        try:
            self.session, welcome = self.node.attach(self.key, self.epoch, hello, self)
        except NotOwner as exc:
            log.info("session_refused", reason=str(exc))
            self.close(CloseCode.NOT_OWNER, "")
            return
        self.welcome = encode(welcome)

    def _hold(self, raw: Raw) -> None:
        size = len(raw)
        self.held.append(raw)
        self.held_bytes += size
        self.node.held_bytes += size
        self._check_budgets()

    def queue(self, size: int) -> None:
        """``size`` bytes of input wait in the node's service queue: they count against
        the same budgets as held input (the shell calls :meth:`dequeue` when they leave)."""
        self.queued_bytes += size
        self.node.held_bytes += size
        self._check_budgets()

    def dequeue(self, size: int) -> None:
        if self.queued_bytes >= size:  # else: released already, when the connection ended
            self.queued_bytes -= size
            self.node.held_bytes -= size

    def _check_budgets(self) -> None:
        if self.held_bytes + self.queued_bytes > self.max_held_bytes:
            # Beyond any sane client window: a client ignoring its own limit.
            self.close(CloseCode.SLOW_CONSUMER, "")
        elif self.node.held_bytes > self.node_held_bytes:
            self.close(CloseCode.TRY_AGAIN_LATER, CloseHint(after_ms=1000).encode())

    def pump(self) -> None:
        """Process held input, in order, while the node lets us."""
        session = self.session
        node = self.node
        while self.held and self.closing is None and session is not None:
            if not node.can_process(session):
                return
            raw = self.held.popleft()
            self.held_bytes -= len(raw)
            node.held_bytes -= len(raw)
            env = decode(raw)  # checked when it arrived; its ack is applied already
            assert type(env) is Msg
            node.process(session, env)

    # ------------------------------------------------------------------ output

    def frames_due(self) -> list[bytes]:
        """Frames to write now: the welcome, then the outbox beyond what this connection
        has written (or a standalone ack). Nothing once a close is wanted, nor while the
        key's changes wait for their write-through commit (it wakes the connection)."""
        if self.closing is not None:
            return []
        session = self.session
        if session is not None:
            if self.held:
                self.pump()
            if self.closing is None and self.node.output_held(session, self):
                return []  # write-through: not before the key's changes are stored
        out: list[bytes] = []
        if self.welcome is not None:
            out.append(self.welcome)
            self.welcome = None
        if session is not None and self.closing is None:
            frames, session.written, session.ack_sent = due_frames(
                session.outbox, session.written, session.inbox.last, session.ack_sent
            )
            out += frames
        return out

    def closed(self, client_code: int | None) -> None:
        """The connection is gone; ``client_code`` is the code of the client's close
        frame, if it sent one (1000 ends the session for good)."""
        self.gone = True
        self.node.held_bytes -= self.held_bytes + self.queued_bytes
        self.held_bytes = self.queued_bytes = 0
        self.held.clear()
        if self.session is not None:
            if client_code == CloseCode.NORMAL:
                self.node.end(self.session, self)
            else:
                self.node.detach(self.session, self)
