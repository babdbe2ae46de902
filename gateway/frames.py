"""Follow WebSocket frame headers in a byte stream without decoding payloads. Sans-I/O.

The relay splices bytes; this tracker reads only the 2-14 byte headers
(RFC 6455 §5.2), across arbitrary chunk boundaries, so the gateway can count
frames, enforce a frame size limit, see close codes and know when the stream
sits at a frame boundary (the only place it may inject a frame of its own).

It also holds a budget of control frames (ping, pong): each costs one unit,
:meth:`FrameTracker.refill` adds ``control_rate`` units per second up to
``control_burst``, and a stream that runs out is answered 1008 (policy): a
flood of pings would otherwise make its backend answer every one, at the
expense of everyone sharing the path.
"""

from __future__ import annotations

import struct

__all__ = [
    "OP_CLOSE",
    "POLICY_VIOLATION",
    "FrameTracker",
    "close_frame",
]

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")

OP_CLOSE = 0x8
POLICY_VIOLATION = 1008
# RFC 6455 §5.2: opcodes 3-7 and 0xB-0xF are reserved.
_VALID_OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})


class FrameTracker:
    """Tracks one direction of a WebSocket stream.

    ``feed()`` returns 0 while the stream is valid, else the close code the
    gateway should send (1002 protocol error, 1008 too many control frames,
    1009 frame too big). After an error the tracker should not be fed again.
    ``control_rate`` 0 means no control-frame budget.
    """

    __slots__ = (
        "_close_buf",
        "_ctl_at",
        "_hdr",
        "_in_close",
        "_mask",
        "_need",
        "bytes",
        "close_code",
        "close_seen",
        "ctl_budget",
        "ctl_burst",
        "ctl_rate",
        "frames",
        "mask_bit",
        "max_frame",
    )

    def __init__(
        self,
        *,
        masked: bool,
        max_frame: int = 1 << 20,
        control_rate: float = 0.0,
        control_burst: int = 0,
    ):
        # Client→server frames must be masked, server→client must not: the header's mask bit.
        self.mask_bit = 0x80 if masked else 0
        self.max_frame = max_frame
        self.ctl_rate = control_rate
        self.ctl_burst = float(max(control_burst, 1)) if control_rate > 0 else float("inf")
        self.ctl_budget = self.ctl_burst  # control frames that may still be sent
        self._ctl_at = 0.0  # when the budget was last refilled
        self.frames = 0
        self.bytes = 0
        self.close_seen = False
        self.close_code: int | None = None
        self._need = 0  # payload bytes still to skip in the current frame
        self._hdr = b""  # a header cut by a chunk boundary
        self._in_close = False
        self._close_buf = b""
        self._mask = b""

    @property
    def masked(self) -> bool:
        return bool(self.mask_bit)

    @property
    def at_boundary(self) -> bool:
        return self._need == 0 and not self._hdr

    def feed(self, data: bytes) -> int:
        n = len(data)
        self.bytes += n
        if not self._need and not self._hdr and n > 3:
            # The common chunk: exactly one whole data frame (an echo, a chat message) whose
            # length fits the header or its 16-bit extension. No slicing, no loop.
            b1 = data[1]
            length = b1 & 0x7F
            hlen = 6 if b1 & 0x80 else 2
            if length == 126:
                length = data[2] << 8 | data[3]
                hlen += 2
            elif length == 127:
                return self._feed(data, n)
            if (
                n == hlen + length
                and b1 & 0x80 == self.mask_bit
                and data[0] & 0x0F < 3  # continuation, text, binary
                and length <= self.max_frame
            ):
                self.frames += 1
                return 0
        return self._feed(data, n)

    def _feed(self, data: bytes, n: int) -> int:
        """Any chunk: frames cut anywhere, several frames, control frames."""
        i = 0
        while i < n:
            need = self._need
            if need:
                take = n - i if n - i < need else need
                if self._in_close and len(self._close_buf) < 2:
                    self._collect_close(data[i : i + take])
                self._need = need - take
                i += take
                continue
            old = self._hdr
            buf = old + data[i : i + 14] if old else data[i : i + 14]
            if len(buf) < 2:
                self._hdr = buf
                return 0
            b0 = buf[0]
            b1 = buf[1]
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                hlen = 4
            elif length == 127:
                hlen = 10
            if b1 & 0x80:
                hlen += 4
            if len(buf) < hlen:
                self._hdr = buf
                return 0
            if length == 126:
                length = _U16.unpack_from(buf, 2)[0]
            elif length == 127:
                length = _U64.unpack_from(buf, 2)[0]
            i += hlen - len(old)
            self._hdr = b""
            opcode = b0 & 0x0F
            if b1 & 0x80 != self.mask_bit or opcode not in _VALID_OPCODES:
                return 1002
            if opcode & 0x8:
                # Control frames: never fragmented, payload <= 125 (RFC 6455 §5.5).
                if not b0 & 0x80 or length > 125:
                    return 1002
                if opcode == OP_CLOSE:
                    self._start_close(buf[hlen - 4 : hlen] if b1 & 0x80 else b"", length)
                else:
                    self.ctl_budget -= 1
                    if self.ctl_budget < 0:
                        return POLICY_VIOLATION
            elif length > self.max_frame:
                return 1009
            self.frames += 1
            self._need = length
        return 0

    def refill(self, now: float) -> None:
        """Add the control-frame budget earned since the last call (``now`` in seconds)."""
        if self._ctl_at:
            budget = self.ctl_budget + (now - self._ctl_at) * self.ctl_rate
            self.ctl_budget = budget if budget < self.ctl_burst else self.ctl_burst
        self._ctl_at = now

    def _start_close(self, mask: bytes, length: int) -> None:
        self.close_seen = True
        self._in_close = length >= 2
        self._mask = mask
        self._close_buf = b""

    def _collect_close(self, chunk: bytes) -> None:
        buf = self._close_buf + chunk[: 2 - len(self._close_buf)]
        self._close_buf = buf
        if len(buf) == 2:
            if self._mask:
                buf = bytes((buf[0] ^ self._mask[0], buf[1] ^ self._mask[1]))
            self.close_code = _U16.unpack(buf)[0]
            self._in_close = False


def close_frame(code: int, reason: str = "", *, mask: bytes | None = None) -> bytes:
    """Encode a close frame; pass a 4-byte ``mask`` when writing as a client."""
    payload = _U16.pack(code) + reason.encode()[:123]
    head = bytes((0x80 | OP_CLOSE, len(payload) | (0x80 if mask else 0)))
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload
