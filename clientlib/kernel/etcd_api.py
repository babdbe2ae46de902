"""etcd v3's JSON gateway, as values: requests, answers, watch messages. Pure.

proto3 JSON leaves out zero values and writes 64-bit integers as strings; keys
and values travel base64-encoded. :class:`LineSplitter` cuts a watch stream into
messages and refuses one larger than ``max_message`` (etcd itself refuses a
request over 1.5 MiB by default, so a directory snapshot stays far below it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "MAX_MESSAGE",
    "Compare",
    "Delete",
    "EtcdError",
    "EtcdUnavailable",
    "Event",
    "KeyValue",
    "LineSplitter",
    "Op",
    "Put",
    "Range",
    "TxnResult",
    "WatchBatch",
    "answer",
    "b64",
    "parse_endpoints",
    "parse_watch",
    "prefix_end",
]

MAX_MESSAGE = 16 << 20


class EtcdError(Exception):
    """etcd answered, and refused the request (the message says why)."""


class EtcdUnavailable(EtcdError):
    """No member answered in time (unreachable, or without a raft leader)."""


def parse_endpoints(spec: str) -> list[str]:
    """``HOST:PORT,HOST:PORT`` → the list; ValueError names a bad entry."""
    out = []
    for part in spec.split(","):
        part = part.strip().removeprefix("http://")
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT[,HOST:PORT…], got {part!r}")
        out.append(part)
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix``."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KeyValue:
        # proto3 JSON leaves out zero values, and writes 64-bit integers as strings.
        return cls(
            _unb64(obj["key"]).decode(),
            _unb64(obj.get("value", "")),
            int(obj.get("create_revision", 0)),
            int(obj.get("mod_revision", 0)),
            int(obj.get("version", 0)),
            int(obj.get("lease", 0)),
        )


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int
    events: tuple[Event, ...] = ()
    created: bool = False
    compacted: int = 0  # > 0: history before this revision is gone; read everything again
    canceled: bool = False


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` compared with ``value``."""

    key: str
    target: Literal["CREATE", "MOD", "VERSION", "VALUE"]
    value: int | bytes
    result: Literal["EQUAL", "NOT_EQUAL", "GREATER", "LESS"] = "EQUAL"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": b64(self.key), "target": self.target, "result": self.result}
        field_of = {
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "VERSION": "version",
            "VALUE": "value",
        }
        v = self.value
        out[field_of[self.target]] = b64(v) if isinstance(v, bytes) else str(v)
        return out


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        req: dict[str, Any] = {"key": b64(self.key), "value": b64(self.value)}
        if self.lease:
            req["lease"] = str(self.lease)
        return {"request_put": req}


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        req = {"key": b64(self.key)}
        if self.prefix:
            req["range_end"] = b64(prefix_end(self.key))
        return {"request_delete_range": req}


@dataclass(frozen=True, slots=True)
class Range:
    key: str
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        req = {"key": b64(self.key)}
        if self.prefix:
            req["range_end"] = b64(prefix_end(self.key))
        return {"request_range": req}


Op = Put | Delete | Range


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction (its puts' mod revision)
    ranges: list[list[KeyValue]] = field(default_factory=list)  # each Range op's answer


class LineSplitter:
    """Cuts a stream of newline-separated JSON messages; bounded by ``max_message``."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self.max_message = max_message
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        out = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            line = bytes(self._buf[:i]).strip()
            del self._buf[: i + 1]
            if line:
                out.append(line)
        if len(self._buf) > self.max_message:
            raise EtcdError(f"watch message larger than {self.max_message} bytes")
        return out


def parse_watch(line: bytes) -> WatchBatch:
    obj = orjson.loads(line)
    if "error" in obj:
        raise EtcdUnavailable(f"watch: {obj['error'].get('message', obj['error'])}")
    res = obj.get("result", {})
    events = tuple(
        Event("delete" if e.get("type") == "DELETE" else "put", KeyValue.from_json(e["kv"]))
        for e in res.get("events", [])
    )
    return WatchBatch(
        int(res.get("header", {}).get("revision", 0)),
        events,
        bool(res.get("created", False)),
        int(res.get("compact_revision", 0)),
        bool(res.get("canceled", False)),
    )


def answer(status: int, body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        if status == 200:  # cut short: nothing of it can be trusted
            raise EtcdUnavailable(f"unreadable answer ({len(body)} bytes)") from None
        obj = {"message": body[:200].decode(errors="replace")}
    if status == 200 and isinstance(obj, dict):
        return obj
    msg = str(obj.get("message") or obj.get("error") or status) if isinstance(obj, dict) else ""
    # Without a raft leader (an election, or a member cut off) the next member may answer.
    if status >= 500 or "leader" in msg or "timed out" in msg:
        raise EtcdUnavailable(msg)
    raise EtcdError(msg)
