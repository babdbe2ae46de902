"""The session wire protocol: envelopes, codec and close codes. Sans-I/O.

Everything that crosses the wire between a client and a backend is defined
here, and ``docs/protocol.md`` describes the same thing for implementers in
other languages (a test keeps the close-code table and this module in step).

No asyncio, no sockets: values in, values or bytes out. A peer's malformed
input is always reported as :class:`ProtocolError`, never as another exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import orjson

__all__ = [
    "CLOSE_ACTIONS",
    "MAX_CLOSE_REASON",
    "MAX_SEQ",
    "MAX_SID_LEN",
    "Ack",
    "Action",
    "CloseCode",
    "CloseHint",
    "Envelope",
    "Hello",
    "Msg",
    "ProtocolError",
    "Welcome",
    "close_action",
    "decode",
    "encode",
    "encode_msg_raw",
]

#: Largest sequence number; JSON integers beyond 2**53 lose precision in many languages.
MAX_SEQ: Final = 2**53 - 1
#: Session ids are opaque printable strings of bounded length.
MAX_SID_LEN: Final = 64
#: RFC 6455 §5.5: a control frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON: Final = 123


class ProtocolError(ValueError):
    """The peer sent something that is not a valid envelope."""


# --------------------------------------------------------------------------- close codes


class Action(enum.Enum):
    """What a client must do when a connection closes with a given code."""

    STOP = "stop"  # do not reconnect; surface an error to the app
    RECONNECT = "reconnect"  # reconnect with exponential backoff and full jitter
    RECONNECT_WINDOW = "reconnect_window"  # reconnect at a uniform random time in window_ms
    RETRY_AFTER = "retry_after"  # wait after_ms (plus jitter), then reconnect


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # 4000-4499: reconnect.
    MOVED = 4000
    SLOW_CONSUMER = 4001
    SEND_QUEUE_FULL = 4002
    NOT_OWNER = 4003
    IDLE_TIMEOUT = 4004
    # 4500-4999: stop.
    UNAUTHORIZED = 4500
    FORBIDDEN_KEY = 4501
    SESSION_PROTOCOL_VIOLATION = 4502
    SESSION_CONFLICT = 4503


CLOSE_ACTIONS: Final[dict[CloseCode, Action]] = {
    CloseCode.NORMAL: Action.STOP,
    CloseCode.GOING_AWAY: Action.RECONNECT_WINDOW,
    CloseCode.PROTOCOL_ERROR: Action.STOP,
    CloseCode.UNSUPPORTED_DATA: Action.STOP,
    CloseCode.ABNORMAL: Action.RECONNECT,
    CloseCode.INVALID_DATA: Action.STOP,
    CloseCode.POLICY_VIOLATION: Action.STOP,
    CloseCode.MESSAGE_TOO_BIG: Action.STOP,
    CloseCode.INTERNAL_ERROR: Action.RECONNECT,
    CloseCode.SERVICE_RESTART: Action.RECONNECT_WINDOW,
    CloseCode.TRY_AGAIN_LATER: Action.RETRY_AFTER,
    CloseCode.MOVED: Action.RECONNECT_WINDOW,
    CloseCode.SLOW_CONSUMER: Action.RECONNECT,
    CloseCode.SEND_QUEUE_FULL: Action.RECONNECT,
    CloseCode.NOT_OWNER: Action.RECONNECT,
    CloseCode.IDLE_TIMEOUT: Action.RECONNECT,
    CloseCode.UNAUTHORIZED: Action.STOP,
    CloseCode.FORBIDDEN_KEY: Action.STOP,
    CloseCode.SESSION_PROTOCOL_VIOLATION: Action.STOP,
    CloseCode.SESSION_CONFLICT: Action.STOP,
}


def close_action(code: int | None) -> Action:
    """Map any close code (known or not) to what the client should do.

    Unknown codes follow their range: 4000-4499 reconnect, 4500-4999 stop;
    anything else (including no close frame at all) reconnects with backoff.
    """
    if code is None:
        return Action.RECONNECT
    try:
        return CLOSE_ACTIONS[CloseCode(code)]
    except ValueError:
        pass
    if 4500 <= code <= 4999:
        return Action.STOP
    return Action.RECONNECT


@dataclass(frozen=True, slots=True)
class CloseHint:
    """The JSON hint carried in a close reason: ``{"after_ms":…, "window_ms":…}``."""

    after_ms: int | None = None
    window_ms: int | None = None

    def encode(self) -> str:
        obj = {k: v for k, v in (("after_ms", self.after_ms), ("window_ms", self.window_ms)) if v}
        text = orjson.dumps(obj).decode() if obj else ""
        if len(text.encode()) > MAX_CLOSE_REASON:
            raise ValueError("close hint too long")
        return text

    @classmethod
    def decode(cls, reason: str) -> CloseHint:
        """Parse a close reason; anything that is not a hint yields an empty hint."""
        if not reason.startswith("{"):
            return cls()
        try:
            obj = orjson.loads(reason)
        except orjson.JSONDecodeError:
            return cls()
        if not isinstance(obj, dict):
            return cls()
        return cls(after_ms=_hint_ms(obj.get("after_ms")), window_ms=_hint_ms(obj.get("window_ms")))


def _hint_ms(v: object) -> int | None:
    # A hostile or buggy server must not make a client sleep for a year.
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 3_600_000:
        return v
    return None


# --------------------------------------------------------------------------- envelopes


@dataclass(frozen=True, slots=True)
class Hello:
    """Client → server, first message. ``sid`` None starts a new session.

    ``ack`` lets the server see a rollback: a server that has processed fewer of
    the client's messages than it once acknowledged lost state, and must answer
    ``resumed: false`` instead of resuming with a hole in the sequence.
    """

    sid: str | None
    last: int  # highest server seq the client has received (0: none)
    ack: int = 0  # highest client seq the server has acknowledged to the client (0: none)


@dataclass(frozen=True, slots=True)
class Welcome:
    """Server → client, answer to Hello."""

    sid: str
    resumed: bool
    last: int  # highest client seq the server has processed (0: none)


@dataclass(frozen=True, slots=True)
class Msg:
    """An application message with its per-direction sequence number and a piggybacked ack."""

    seq: int
    ack: int
    data: Any


@dataclass(frozen=True, slots=True)
class Ack:
    """A standalone cumulative ack: every seq ≤ ``ack`` was received."""

    ack: int


Envelope: TypeAlias = Hello | Welcome | Msg | Ack


def encode(env: Envelope) -> bytes:
    """Serialize an envelope. Raises TypeError for data orjson cannot encode."""
    match env:
        case Msg(seq, ack, data):
            return orjson.dumps({"t": "msg", "seq": seq, "ack": ack, "d": data})
        case Ack(ack):
            return orjson.dumps({"t": "ack", "ack": ack})
        case Hello(sid, last, ack):
            return orjson.dumps({"t": "hello", "sid": sid, "last": last, "ack": ack})
        case Welcome(sid, resumed, last):
            return orjson.dumps({"t": "welcome", "sid": sid, "resumed": resumed, "last": last})
    raise TypeError(f"not an envelope: {env!r}")


def encode_msg_raw(seq: int, ack: int, data_json: bytes) -> bytes:
    """Build a msg envelope around data that is already JSON (the hot path: encode once)."""
    return b'{"t":"msg","seq":%d,"ack":%d,"d":%b}' % (seq, ack, data_json)


_MISSING: Final = object()


def decode(raw: bytes | str) -> Envelope:
    """Parse one envelope. Any invalid input raises :class:`ProtocolError`."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("envelope is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("envelope is not a JSON object")
    t = obj.get("t")
    if t == "msg":
        seq, ack, data = obj.get("seq"), obj.get("ack"), obj.get("d", _MISSING)
        # Hot path: checks inlined; `type(x) is int` also refuses bool.
        if (
            type(seq) is int
            and type(ack) is int
            and 0 < seq <= MAX_SEQ
            and 0 <= ack <= MAX_SEQ
            and data is not _MISSING
        ):
            return Msg(seq, ack, data)
        if data is _MISSING:
            raise ProtocolError("msg without d")
        return Msg(_seq(obj, "seq", minimum=1), _seq(obj, "ack"), data)
    if t == "ack":
        return Ack(_seq(obj, "ack"))
    if t == "hello":
        ack = _seq(obj, "ack") if "ack" in obj else 0  # optional: older clients omit it
        return Hello(_sid(obj.get("sid"), optional=True), _seq(obj, "last"), ack)
    if t == "welcome":
        resumed = obj.get("resumed")
        if not isinstance(resumed, bool):
            raise ProtocolError("welcome.resumed must be a boolean")
        sid = _sid(obj.get("sid"), optional=False)
        assert sid is not None
        return Welcome(sid, resumed, _seq(obj, "last"))
    raise ProtocolError(f"unknown envelope type {str(t)[:32]!r}")


def _seq(obj: dict[str, Any], name: str, minimum: int = 0) -> int:
    v = obj.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not minimum <= v <= MAX_SEQ:
        raise ProtocolError(f"{name} must be an integer in [{minimum}, 2**53-1]")
    return v


def _sid(v: object, *, optional: bool) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or not 0 < len(v) <= MAX_SID_LEN or not v.isprintable():
        raise ProtocolError(f"sid must be a printable string of 1..{MAX_SID_LEN} characters")
    return v
