"""Sequence numbers, cumulative acks, replay and duplicate drop. Sans-I/O.

Both ends of a session use the same two halves:

* :class:`Outbox` numbers outgoing messages and keeps each until the peer's
  cumulative ack covers it, so it can be resent after a reconnect; it is
  bounded in count and bytes.
* :class:`Inbox` remembers the highest in-order seq received and drops
  anything at or below it, so a resend is never delivered twice.

Together they give exactly-once delivery to the application on top of a
transport that may lose a connection at any point.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from clientlib.kernel.session_protocol import Ack, ProtocolError, encode, encode_msg_raw

__all__ = [
    "Inbox",
    "Outbox",
    "OutboxFull",
    "Pending",
    "due_frames",
    "dumps",
]


class OutboxFull(Exception):
    """The outbox holds as many unacked messages (or bytes) as it may."""


@dataclass(slots=True)
class Pending:
    seq: int
    data_json: bytes


class Outbox:
    """Outgoing messages not yet acknowledged by the peer, oldest first."""

    __slots__ = ("_items", "acked", "bytes", "max_bytes", "max_count", "next_seq")

    def __init__(self, *, max_count: int = 1024, max_bytes: int = 1 << 20, next_seq: int = 1):
        self._items: deque[Pending] = deque()
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.next_seq = next_seq
        self.acked = next_seq - 1  # highest seq the peer has acknowledged
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def has_room(self, size: int = 0) -> bool:
        return len(self._items) < self.max_count and self.bytes + size <= self.max_bytes

    def push(self, data_json: bytes) -> int:
        """Number a message and keep it for replay; returns its seq."""
        size = len(data_json)
        if not self.has_room(size):
            raise OutboxFull(f"{len(self._items)} messages, {self.bytes} bytes unacked")
        seq = self.next_seq
        self.next_seq += 1
        self._items.append(Pending(seq, data_json))
        self.bytes += size
        return seq

    def ack(self, upto: int) -> int:
        """Apply a cumulative ack; returns how many messages it released.

        An ack below what was already acked is a harmless reorder; an ack for a
        seq never sent is a peer bug and raises :class:`ProtocolError`.
        """
        if upto > self.last_seq:
            raise ProtocolError(f"ack {upto} for a message never sent (last {self.last_seq})")
        released = 0
        items = self._items
        while items and items[0].seq <= upto:
            self.bytes -= len(items.popleft().data_json)
            released += 1
        if upto > self.acked:
            self.acked = upto
        return released

    def unacked(self) -> list[bytes]:
        """The data of every message not yet acknowledged, oldest first."""
        return [p.data_json for p in self._items]

    def frames(self, ack: int) -> list[bytes]:
        """Every unacked message as an encoded envelope, for a resend after reconnect."""
        return [encode_msg_raw(p.seq, ack, p.data_json) for p in self._items]

    def frames_after(self, written: int, ack: int) -> list[bytes]:
        """Encoded envelopes for messages with seq > ``written`` (not yet on this connection)."""
        return [encode_msg_raw(p.seq, ack, p.data_json) for p in self._items if p.seq > written]

    def texts_after(self, seq: int) -> list[str]:
        """The data (JSON text) of the unacked messages numbered above ``seq``, oldest
        first; costs what it returns, not the whole buffer."""
        out: list[str] = []
        for p in reversed(self._items):
            if p.seq <= seq:
                break
            out.append(p.data_json.decode())
        out.reverse()
        return out

    def to_state(self) -> dict[str, Any]:
        return {
            "next_seq": self.next_seq,
            "items": [[p.seq, p.data_json.decode()] for p in self._items],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], *, max_count: int, max_bytes: int) -> Outbox:
        box = cls(max_count=max_count, max_bytes=max_bytes, next_seq=int(state["next_seq"]))
        for seq, text in state["items"]:
            data = text.encode()
            box._items.append(Pending(int(seq), data))
            box.bytes += len(data)
        if box._items:
            box.acked = box._items[0].seq - 1
        return box


def due_frames(
    outbox: Outbox, written: int, ack: int, ack_sent: int
) -> tuple[list[bytes], int, int]:
    """What a connection should send next: the outbox beyond ``written`` (each frame
    carrying ``ack``), else a standalone ack if ``ack`` advanced past ``ack_sent``.
    Returns (frames, new written, new ack_sent)."""
    frames = outbox.frames_after(written, ack)
    if frames:
        return frames, outbox.last_seq, ack
    if ack > ack_sent:
        return [encode(Ack(ack))], written, ack
    return [], written, ack_sent


class Inbox:
    """Incoming sequence tracking: in-order delivery, duplicates dropped."""

    __slots__ = ("last",)

    def __init__(self, last: int = 0):
        self.last = last  # highest seq delivered to the application

    def accept(self, seq: int) -> bool:
        """True if ``seq`` is new and must be delivered; False for a duplicate.

        A gap means the peer skipped a seq; that is a protocol violation, since
        the transport is ordered and resends start from the oldest unacked.
        """
        if seq <= self.last:
            return False
        if seq != self.last + 1:
            raise ProtocolError(f"seq {seq} skips ahead of {self.last + 1}")
        self.last = seq
        return True


def dumps(obj: Any) -> bytes:
    """JSON-encode application data (orjson); TypeError for what JSON cannot hold."""
    return orjson.dumps(obj)
