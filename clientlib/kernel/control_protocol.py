"""The control-plane protocol (backend ↔ control plane): typed messages and their codec.

Sans-I/O, like the session protocol. Every message is a frozen dataclass; the
union of each direction is named; :func:`encode` turns one into JSON bytes and
:func:`decode` turns bytes back into one, or raises
:class:`~clientlib.kernel.session_protocol.ProtocolError` for anything
malformed. Control input is checked here, where it enters, never three calls
later in a tick loop: a node's load report is stored as a typed
:class:`LoadReport` and never parsed again.

``docs/control-plane.md`` lists the same messages for implementers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import orjson

from clientlib.kernel.routing import MAX_KEY_LEN, SlotTable, Unit
from clientlib.kernel.session_protocol import MAX_SEQ, ProtocolError

__all__ = [
    "MAX_HOT_KEYS",
    "MAX_NODE_ID_LEN",
    "ControlError",
    "ControlMessage",
    "Granted",
    "Leave",
    "Left",
    "LoadReport",
    "Refused",
    "Register",
    "Release",
    "Released",
    "Report",
    "TableUpdate",
    "decode",
    "encode",
]

MAX_NODE_ID_LEN: Final = 128
MAX_ADDR_LEN: Final = 300
#: A report names at most this many hot keys; more is a bug or an attack.
MAX_HOT_KEYS: Final = 256
#: Upper bound on the units of one release order and the keys of one registration.
MAX_UNITS: Final = 1 << 20
MAX_ERROR_LEN: Final = 200


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a node observed over its last report interval (smoothed)."""

    rate: float  # smoothed messages/s on this node
    capacity: float
    score: float  # rate / capacity
    pressure: bool
    sessions: int
    keys: int
    slots: dict[int, float]  # slot → smoothed messages/s
    hot_keys: tuple[tuple[str, int, float], ...]  # (key, slot, messages/s), hottest first
    handler_us: float  # mean handler time per message
    loop_lag_ms: float = 0.0
    busy: float = 0.0  # fraction of the interval the node's server (or CPU) was busy
    delay_ms: float = 0.0  # time in system, p90 over the interval (smoothed)

    @property
    def util(self) -> float:
        return self.rate / self.capacity if self.capacity > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 2),
            "capacity": self.capacity,
            "score": round(self.score, 4),
            "pressure": self.pressure,
            "sessions": self.sessions,
            "keys": self.keys,
            "slots": {str(s): round(r, 2) for s, r in self.slots.items()},
            "hot_keys": [[k, s, round(r, 2)] for k, s, r in self.hot_keys],
            "handler_us": round(self.handler_us, 1),
            "loop_lag_ms": round(self.loop_lag_ms, 2),
            "busy": round(self.busy, 3),
            "delay_ms": round(self.delay_ms, 2),
        }

    @classmethod
    def from_json(cls, obj: object) -> LoadReport:
        o = _obj(obj, "load")
        slots_raw = _obj(o.get("slots", {}), "load.slots")
        if len(slots_raw) > 65536:
            raise ProtocolError("load.slots: too many slots")
        slots: dict[int, float] = {}
        for s, r in slots_raw.items():
            if not s.isdigit() or len(s) > 5:
                raise ProtocolError("load.slots: keys must be slot numbers")
            slots[int(s)] = _num(r, "load.slots rate")
        hot_raw = _list(o.get("hot_keys", []), "load.hot_keys", MAX_HOT_KEYS)
        hot: list[tuple[str, int, float]] = []
        for item in hot_raw:
            if not isinstance(item, list) or len(item) != 3:
                raise ProtocolError("load.hot_keys: items are [key, slot, rate]")
            hot.append(
                (_key(item[0]), _int(item[1], "hot key slot", 0, 65535), _num(item[2], "rate"))
            )
        capacity = _num(o.get("capacity"), "load.capacity")
        if capacity <= 0:
            raise ProtocolError("load.capacity must be > 0")
        return cls(
            rate=_num(o.get("rate"), "load.rate"),
            capacity=capacity,
            score=_num(o.get("score", 0.0), "load.score"),
            pressure=_bool(o.get("pressure", False), "load.pressure"),
            sessions=_int(o.get("sessions", 0), "load.sessions"),
            keys=_int(o.get("keys", 0), "load.keys"),
            slots=slots,
            hot_keys=tuple(hot),
            handler_us=_num(o.get("handler_us", 0.0), "load.handler_us"),
            loop_lag_ms=_num(o.get("loop_lag_ms", 0.0), "load.loop_lag_ms"),
            busy=_num(o.get("busy", 0.0), "load.busy"),
            delay_ms=_num(o.get("delay_ms", 0.0), "load.delay_ms"),
        )


# --------------------------------------------------------------------------- backend → plane


@dataclass(frozen=True, slots=True)
class Register:
    """First message of a control session: who the node is and what it holds.

    ``incarnation`` is new for every process: a second process claiming a node id
    whose first is still alive is refused, instead of taking its traffic.
    ``max_epoch`` is the highest epoch the node has seen in the state store, so a
    control plane that lost its own counter never hands out a lower one.
    """

    node: str
    incarnation: str
    addr: tuple[str, int]
    capacity: float
    keys: dict[str, int]  # keys active on the node → the epoch it holds them at
    max_epoch: int = 0


@dataclass(frozen=True, slots=True)
class Report:
    """A load report; asks for the lease to be renewed (answered by :class:`Granted`)."""

    seq: int
    load: LoadReport
    table_version: int = 0  # the version of the table the node holds


@dataclass(frozen=True, slots=True)
class Released:
    """The units of move ``move`` are frozen and flushed for their new owners.

    A non-empty ``error`` says the flush failed: the control plane aborts the move.
    """

    move: int
    flushed: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Leave:
    """The node is stopping and has flushed everything: reassign all it owns."""

    node: str


# --------------------------------------------------------------------------- plane → backend


@dataclass(frozen=True, slots=True)
class Granted:
    """The lease is renewed for ``lease_ms`` from when report ``seq`` was sent
    (``seq`` 0: from the registration)."""

    seq: int
    lease_ms: int


@dataclass(frozen=True, slots=True)
class TableUpdate:
    """The whole assignment table (on registration and after every change).

    It is also how a move commits: a unit whose owner changed is no longer the
    node's to serve; one given back at a newer epoch (an aborted move) is again.
    """

    table: SlotTable


@dataclass(frozen=True, slots=True)
class Release:
    """A move: freeze each unit and flush its keys at ``epoch`` for its new owner.

    Idempotent: the same release again flushes again and answers again.
    """

    move: int
    epoch: int
    targets: tuple[tuple[Unit, str], ...]  # (unit, new owner)
    # The table version the move was planned on: a node whose table is older does not
    # know every key that has a unit of its own, so it must not act yet (0: unknown).
    version: int = 0


@dataclass(frozen=True, slots=True)
class Left:
    """Answer to :class:`Leave`: everything has been reassigned."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The registration is refused (the session is closed after it)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ControlError:
    """The peer's last message was refused (it changed nothing)."""

    error: str


ToPlane: TypeAlias = Register | Report | Released | Leave
ToNode: TypeAlias = Granted | TableUpdate | Release | Left | Refused | ControlError
ControlMessage: TypeAlias = ToPlane | ToNode


# --------------------------------------------------------------------------- codec


def encode(msg: ControlMessage) -> bytes:
    """Serialize one control message."""
    match msg:
        case Report(seq, load, version):
            return orjson.dumps(
                {"t": "report", "seq": seq, "load": load.to_json(), "table_version": version}
            )
        case Granted(seq, lease_ms):
            return orjson.dumps({"t": "granted", "seq": seq, "lease_ms": lease_ms})
        case Register(node, incarnation, (host, port), capacity, keys, max_epoch):
            return orjson.dumps(
                {
                    "t": "register",
                    "node": node,
                    "incarnation": incarnation,
                    "addr": f"{host}:{port}",
                    "capacity": capacity,
                    "keys": keys,
                    "max_epoch": max_epoch,
                }
            )
        case Released(move, flushed, error):
            return orjson.dumps({"t": "released", "move": move, "flushed": flushed, "error": error})
        case Leave(node):
            return orjson.dumps({"t": "leave", "node": node})
        case TableUpdate(table):
            return orjson.dumps({"t": "table", "table": table.to_json()})
        case Release(move, epoch, targets, version):
            return orjson.dumps(
                {
                    "t": "release",
                    "move": move,
                    "epoch": epoch,
                    "targets": [[kind, u, dst] for (kind, u), dst in targets],
                    "version": version,
                }
            )
        case Left():
            return b'{"t":"left"}'
        case Refused(reason):
            return orjson.dumps({"t": "refused", "reason": reason[:MAX_ERROR_LEN]})
        case ControlError(error):
            return orjson.dumps({"t": "error", "error": error[:MAX_ERROR_LEN]})
    raise TypeError(f"not a control message: {msg!r}")


def decode(raw: bytes | str) -> ControlMessage:
    """Parse one control message; anything malformed raises ProtocolError."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("control message is not valid JSON") from exc
    o = _obj(obj, "control message")
    t = o.get("t")
    parse = _PARSERS.get(t) if isinstance(t, str) else None
    if parse is None:
        raise ProtocolError(f"unknown control message type {str(t)[:32]!r}")
    return parse(o)


def _register(o: dict[str, Any]) -> Register:
    addr = o.get("addr")
    if not isinstance(addr, str) or len(addr) > MAX_ADDR_LEN:
        raise ProtocolError("register.addr must be HOST:PORT")
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ProtocolError("register.addr must be HOST:PORT")
    capacity = _num(o.get("capacity"), "register.capacity")
    if capacity <= 0:
        raise ProtocolError("register.capacity must be > 0")
    keys_raw = _obj(o.get("keys", {}), "register.keys")
    if len(keys_raw) > MAX_UNITS:
        raise ProtocolError("register.keys: too many keys")
    keys = {_key(k): _int(e, "register.keys epoch") for k, e in keys_raw.items()}
    incarnation = o.get("incarnation")
    if not isinstance(incarnation, str) or not 0 < len(incarnation) <= 64:
        raise ProtocolError("register.incarnation must be a string of 1..64 characters")
    return Register(
        _node_id(o.get("node")),
        incarnation,
        (host.strip("[]"), int(port)),
        capacity,
        keys,
        _int(o.get("max_epoch", 0), "register.max_epoch"),
    )


def _table(o: dict[str, Any]) -> TableUpdate:
    try:
        return TableUpdate(SlotTable.from_json(o.get("table")))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProtocolError(f"table: {str(exc)[:100]}") from None


def _unit(kind: object, u: object) -> Unit:
    if kind == "slot":
        return ("slot", _int(u, "slot", 0, 65535))
    if kind == "key":
        return ("key", _key(u))
    raise ProtocolError("units: kind must be slot or key")


def _release(o: dict[str, Any]) -> Release:
    targets: list[tuple[Unit, str]] = []
    for item in _list(o.get("targets"), "release.targets", MAX_UNITS):
        if not isinstance(item, list) or len(item) != 3:
            raise ProtocolError("release.targets: items are [kind, unit, node]")
        targets.append((_unit(item[0], item[1]), _node_id(item[2])))
    return Release(
        _int(o.get("move"), "move"),
        _int(o.get("epoch"), "epoch"),
        tuple(targets),
        _int(o.get("version", 0), "version"),
    )


def _released(o: dict[str, Any]) -> Released:
    error = o.get("error", "")
    if not isinstance(error, str):
        raise ProtocolError("released.error must be a string")
    return Released(
        _int(o.get("move"), "move"),
        _int(o.get("flushed", 0), "released.flushed"),
        error[:MAX_ERROR_LEN],
    )


_PARSERS: Final[dict[str, Callable[[dict[str, Any]], ControlMessage]]] = {
    "register": _register,
    "report": lambda o: Report(
        _int(o.get("seq"), "report.seq"),
        LoadReport.from_json(o.get("load")),
        _int(o.get("table_version", 0), "report.table_version"),
    ),
    "released": _released,
    "leave": lambda o: Leave(_node_id(o.get("node"))),
    "granted": lambda o: Granted(
        _int(o.get("seq"), "granted.seq"), _int(o.get("lease_ms"), "granted.lease_ms", 1)
    ),
    "table": _table,
    "release": _release,
    "left": lambda o: Left(),
    "refused": lambda o: Refused(str(o.get("reason", ""))[:MAX_ERROR_LEN]),
    "error": lambda o: ControlError(str(o.get("error", ""))[:MAX_ERROR_LEN]),
}


# --------------------------------------------------------------------------- field checks


def _obj(v: object, name: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ProtocolError(f"{name} must be a JSON object")
    return v


def _list(v: object, name: str, limit: int) -> list[Any]:
    if not isinstance(v, list):
        raise ProtocolError(f"{name} must be a list")
    if len(v) > limit:
        raise ProtocolError(f"{name}: more than {limit} items")
    return v


def _int(v: object, name: str, lo: int = 0, hi: int = MAX_SEQ) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ProtocolError(f"{name} must be an integer in [{lo}, {hi}]")
    return v


def _num(v: object, name: str) -> float:
    if (type(v) is not int and type(v) is not float) or not math.isfinite(v) or v < 0:
        raise ProtocolError(f"{name} must be a finite number >= 0")
    return float(v)


def _bool(v: object, name: str) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"{name} must be a boolean")
    return v


def _key(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_KEY_LEN or not v.isprintable():
        raise ProtocolError(f"keys are printable strings of 1..{MAX_KEY_LEN} characters")
    return v


def _node_id(v: object) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_NODE_ID_LEN or not v.isprintable():
        raise ProtocolError(f"node ids are printable strings of 1..{MAX_NODE_ID_LEN} characters")
    return v
