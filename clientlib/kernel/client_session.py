"""The client's half of a session, sans-I/O: hello, welcome, resume, dedup, acks.

:class:`ClientSession` is what a client must remember across connections and
what it decides on each envelope; the asyncio client and the simulator drive
it. It never touches a socket and never sleeps.

On every new connection: send :meth:`hello` (its ``ack`` lets the server see
that it lost state it had acknowledged), then hand the server's answer to
:meth:`welcome`. ``resumed``: both sides drop what the other acknowledged and
resend the rest. Not resumed (the server lost the session): the unacknowledged
messages are renumbered from 1 and resent, and the app is told.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Final

from clientlib.kernel.replay import Inbox, Outbox, due_frames
from clientlib.kernel.session_protocol import Ack, Hello, Msg, ProtocolError, Welcome, decode

__all__ = ["NOTHING", "ClientSession", "Joined"]

#: :meth:`ClientSession.receive` found nothing for the app (an ack, or a duplicate).
NOTHING: Final = object()


class Joined(Enum):
    NEW = "new"  # the first session
    RESUMED = "resumed"
    NOT_RESUMED = "not_resumed"  # the server lost the session; a new one started


class ClientSession:
    __slots__ = ("ack_sent", "duplicates", "inbox", "outbox", "sid", "written")

    def __init__(self, *, max_pending: int = 1024, max_pending_bytes: int = 1 << 20):
        self.outbox = Outbox(max_count=max_pending, max_bytes=max_pending_bytes)
        self.inbox = Inbox()
        self.sid: str | None = None
        self.written = 0  # highest outbox seq written on the current connection
        self.ack_sent = 0  # highest inbox seq acknowledged on the current connection
        self.duplicates = 0

    def hello(self) -> Hello:
        return Hello(self.sid, self.inbox.last, self.outbox.acked)

    def welcome(self, w: Welcome) -> tuple[Joined, dict[int, int]]:
        """Apply the server's answer to hello. Returns how the session joined, and for a
        session that was not resumed, the new seq of each message still unacked
        (old seq → new seq). ProtocolError if the answer is impossible."""
        mapping: dict[int, int] = {}
        if w.resumed and self.sid is not None and w.sid == self.sid:
            if w.last < self.outbox.acked:
                # It acknowledged more than it now says it processed, yet claims to resume.
                raise ProtocolError(
                    f"server resumed at {w.last} after acknowledging {self.outbox.acked}"
                )
            self.outbox.ack(w.last)  # ProtocolError if it claims messages never sent
            joined = Joined.RESUMED
        elif self.sid is not None:
            mapping = self._renumber()
            self.inbox = Inbox()
            joined = Joined.NOT_RESUMED
        else:
            if w.last != 0:
                raise ProtocolError("a new session cannot have processed anything")
            joined = Joined.NEW
        self.sid = w.sid
        self.written = self.outbox.acked
        self.ack_sent = 0
        return joined, mapping

    def _renumber(self) -> dict[int, int]:
        old = self.outbox
        new = Outbox(max_count=old.max_count, max_bytes=old.max_bytes)
        first = old.acked + 1
        mapping = {first + i: new.push(data) for i, data in enumerate(old.unacked())}
        self.outbox = new
        return mapping

    def receive(self, raw: bytes | str) -> tuple[Any, int]:
        """One envelope from the server after welcome: (data for the app or NOTHING,
        the cumulative ack it carried). ProtocolError for anything invalid."""
        env = decode(raw)
        if type(env) is Msg:
            self.outbox.ack(env.ack)
            if self.inbox.accept(env.seq):
                return env.data, env.ack
            self.duplicates += 1
            return NOTHING, env.ack
        if type(env) is Ack:
            self.outbox.ack(env.ack)
            return NOTHING, env.ack
        raise ProtocolError(f"unexpected {type(env).__name__.lower()} during a session")

    def frames_due(self) -> list[bytes]:
        frames, self.written, self.ack_sent = due_frames(
            self.outbox, self.written, self.inbox.last, self.ack_sent
        )
        return frames

    def unsent(self) -> bool:
        """Messages queued that this connection has not written yet."""
        return self.outbox.last_seq > self.written

    def unacked_received(self) -> int:
        """Messages received and not yet acknowledged on this connection."""
        return self.inbox.last - self.ack_sent
