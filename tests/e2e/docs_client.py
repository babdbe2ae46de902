"""A client of the session protocol written from docs/protocol.md alone.

It shares no code with `clientlib`: it speaks the protocol with plain `websockets`
exactly as the page states it, so that the end-to-end tests built on it check the
page (and the servers against the page) rather than the reference client against
itself. Each rule it follows names the rule of docs/protocol.md it comes from.

It is deliberately small: one key, one session, one gateway URL, and a log of
everything that happened on the wire so that tests can assert on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

MAX_INT = 2**53 - 1  # rule 10
HINT_MIN_MS, HINT_MAX_MS = 1, 3_600_000  # "hints outside 1 ms to 1 h are ignored"

# The close-code table: code -> action.
ACTIONS: dict[int, str] = {
    1000: "stop",
    1001: "reconnect_window",
    1002: "stop",
    1003: "stop",
    1006: "reconnect",
    1007: "stop",
    1008: "stop",
    1009: "stop",
    1011: "reconnect",
    1012: "reconnect_window",
    1013: "retry_after",
    4000: "reconnect_window",
    4001: "reconnect",
    4002: "reconnect",
    4003: "reconnect",
    4004: "reconnect",
    4500: "stop",
    4501: "stop",
    4502: "stop",
    4503: "stop",
}

# HTTP refusals of the upgrade: status -> action ("retry_after" reads Retry-After).
HTTP_ACTIONS: dict[int, str] = {
    400: "stop",
    401: "stop",
    403: "stop",
    404: "stop",
    405: "stop",
    426: "stop",
    408: "reconnect",
    429: "retry_after",
    503: "retry_after",
    502: "reconnect",
    504: "reconnect",
}


def action_for(code: int) -> str:
    """The close-code table, and for unknown codes their range."""
    if code in ACTIONS:
        return ACTIONS[code]
    if 4000 <= code <= 4499:
        return "reconnect"
    if 4500 <= code <= 4999:
        return "stop"
    return "reconnect"


def parse_hint(reason: str) -> dict[str, int]:
    """The close reason: empty or a small JSON hint; anything else is no hint."""
    if not reason:
        return {}
    try:
        obj = json.loads(reason)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, int] = {}
    for name in ("after_ms", "window_ms"):
        v = obj.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and HINT_MIN_MS <= v <= HINT_MAX_MS:
            out[name] = v
    return out


@dataclass
class Backoff:
    """Delays before the next attempt, as the close-codes section states them."""

    base: float = 0.25
    cap: float = 30.0
    default_window: float = 1.0
    stable_after: float = 10.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, action: str, hint: dict[str, int], lived: float = 0.0) -> float:
        """The wait after a connection that ended (or an attempt that failed) after
        ``lived`` seconds. Every failure counts, whatever its action; a connection that
        lived ``stable_after`` ends the row."""
        self.attempt = 0 if lived >= self.stable_after else self.attempt + 1
        exponent = max(self.attempt - 1, 0)
        if action == "reconnect_window":
            return self.rng.uniform(0, hint.get("window_ms", self.default_window * 1000) / 1000)
        if action == "retry_after" and "after_ms" in hint:
            after = hint["after_ms"] / 1000
            return after + self.rng.uniform(0, after / 4)
        # "reconnect", and retry_after without its hint: full-jitter exponential backoff.
        return self.rng.uniform(0, min(self.cap, self.base * 2**exponent))


class ProtocolViolation(Exception):
    """The server broke docs/protocol.md."""


class Stopped(Exception):
    """The client stopped: a `stop` close code or HTTP status, or a violation."""

    def __init__(self, why: str, code: int | None = None) -> None:
        super().__init__(why)
        self.code = code


@dataclass
class Event:
    kind: str  # connected, welcome, closed, refused, failed, stopped
    code: int | None = None
    detail: Any = None


def key_url(base: str, key: str) -> str:
    """Section 1: the key percent-encoded as UTF-8, `+` as %2B."""
    return f"{base}?key={quote(key, safe='')}"


class DocsClient:
    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        connect_timeout: float = 10.0,
        ack_every: int = 32,
        ack_delay: float = 0.05,
        backoff: Backoff | None = None,
        hello_override: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.url = key_url(base_url, key)
        self.key = key
        self.connect_timeout = connect_timeout
        self.ack_every = ack_every
        self.ack_delay = ack_delay
        self.backoff = backoff or Backoff()
        self.hello_override = hello_override
        # session state
        self.sid: str | None = None
        self.recv_last = 0  # highest server seq delivered (rule 5)
        self.server_acked = 0  # highest own seq the server acknowledged (rule 2)
        self.next_seq = 1  # rule 1
        self.pending: dict[int, Any] = {}  # seq -> d, kept until acked (rule 3)
        self.acks_owed = 0
        self.ack_sent = 0
        # observation
        self.events: list[Event] = []
        self.delivered: asyncio.Queue[Any] = asyncio.Queue()
        self.duplicates = 0
        self.sessions = 0
        self.not_resumed = 0
        self.resumes = 0
        self.stopped: Stopped | None = None
        self.connected = asyncio.Event()
        # i/o
        self._ws: Any = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._ack_task: asyncio.Task[None] | None = None
        self._closing = False
        self._acked_cond = asyncio.Condition()

    # ---------------------------------------------------------------- app side

    async def start(self, timeout: float = 30.0) -> None:
        self._task = asyncio.create_task(self._run())
        await self.wait_connected(timeout)

    async def wait_connected(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.connected.is_set():
                if self.stopped is not None:
                    raise self.stopped
                await asyncio.sleep(0.01)

    async def send(self, d: Any) -> int:
        if self.stopped is not None:
            raise self.stopped
        async with self._lock:
            seq = self.next_seq
            self.next_seq += 1
            self.pending[seq] = d
            if self._ws is not None and self.connected.is_set():
                await self._send_msg(seq, d)
        return seq

    async def recv(self, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):
            return await self.delivered.get()

    async def wait_all_acked(self, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout), self._acked_cond:
            await self._acked_cond.wait_for(lambda: not self.pending or self.stopped is not None)
        if self.stopped is not None:
            raise self.stopped

    async def close(self) -> None:
        """Rule 9: end the session for good (close 1000)."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await self._flush_ack(ws)
                await ws.close(1000)
        await self.abort()

    def drop(self) -> None:
        """Cut the current connection without a close frame (a network failure)."""
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    async def abort(self) -> None:
        """Stop the client without ending the session (as a crashed app would)."""
        self._closing = True
        for t in (self._task, self._ack_task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        ws = self._ws
        if ws is not None:
            # close the transport without a close frame: the session stays resumable
            ws.transport.abort()
            self._ws = None

    # ------------------------------------------------------------- connection

    async def _run(self) -> None:
        while not self._closing:
            started = time.monotonic()
            try:
                action, hint = await self._one_connection()
            except Stopped as exc:
                self.stopped = exc
                self.events.append(Event("stopped", exc.code, str(exc)))
                async with self._acked_cond:
                    self._acked_cond.notify_all()
                return
            finally:
                self.connected.clear()
                self._ws = None
            if self._closing:
                return
            await asyncio.sleep(self.backoff.delay(action, hint, time.monotonic() - started))

    async def _one_connection(self) -> tuple[str, dict[str, int]]:
        try:
            ws = await websockets.connect(
                self.url,
                open_timeout=self.connect_timeout,
                max_size=2**20,
                compression=None,
                ping_interval=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            action = HTTP_ACTIONS.get(status, "reconnect" if status >= 500 else "stop")
            self.events.append(Event("refused", status))
            if action == "stop":
                raise Stopped(f"upgrade refused with {status}", status) from exc
            hint: dict[str, int] = {}
            retry = exc.response.headers.get("Retry-After")
            if retry is not None and retry.isdigit():
                hint["after_ms"] = int(retry) * 1000
            return action, hint
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            self.events.append(Event("failed", None, repr(exc)))
            return "reconnect", {}
        self._ws = ws
        self.events.append(Event("connected"))
        try:
            await self._handshake(ws)
            self._ack_task = asyncio.create_task(self._ack_timer(ws))
            await self._read(ws)
        except ConnectionClosed:
            pass
        except TimeoutError:
            # rule 8: no welcome in time: give the connection up, retry with backoff
            ws.transport.abort()
            self.events.append(Event("failed", None, "no welcome"))
            return "reconnect", {}
        except ProtocolViolation as exc:
            with contextlib.suppress(Exception):
                await ws.close(4502)
            raise Stopped(f"server protocol violation: {exc}", 4502) from exc
        finally:
            if self._ack_task is not None:
                self._ack_task.cancel()
                self._ack_task = None
        rcvd = ws.protocol.close_rcvd
        code = rcvd.code if rcvd is not None else 1006
        reason = rcvd.reason if rcvd is not None else ""
        self.events.append(Event("closed", code, reason))
        action = action_for(code)
        if action == "stop":
            raise Stopped(f"closed with {code} {reason}", code)
        return action, parse_hint(reason)

    async def _handshake(self, ws: Any) -> None:
        """Rules 4, 6, 8: hello, wait for welcome, then resend."""
        hello: dict[str, Any] = {
            "t": "hello",
            "sid": self.sid,
            "last": self.recv_last,
            "ack": self.server_acked,
        }
        if self.hello_override is not None:
            hello = self.hello_override(hello)
        await ws.send(json.dumps(hello))
        async with asyncio.timeout(self.connect_timeout):
            raw = await ws.recv()
        w = self._decode(raw)
        if w.get("t") != "welcome":
            raise ProtocolViolation(f"first message is not welcome: {w!r}")
        sid, resumed, last = w.get("sid"), w.get("resumed"), w.get("last")
        if not isinstance(sid, str) or not isinstance(resumed, bool):
            raise ProtocolViolation(f"bad welcome {w!r}")
        self._check_int(last, 0)
        self.events.append(Event("welcome", None, dict(w)))
        async with self._lock:
            first = self.sid is None
            self.sessions += 1
            if resumed:
                if last < self.server_acked:
                    raise ProtocolViolation(f"welcome.last {last} < acked {self.server_acked}")
                if last >= self.next_seq:
                    raise ProtocolViolation(f"welcome.last {last} beyond sent {self.next_seq - 1}")
                self.resumes += 1
                self._acked(last)
            else:
                # rule 6: both directions restart at 1; renumber what we held
                if not first:
                    self.not_resumed += 1
                held = [self.pending[s] for s in sorted(self.pending)]
                self.pending = {i + 1: d for i, d in enumerate(held)}
                self.next_seq = len(held) + 1
                self.recv_last = 0
                self.server_acked = 0
                self.ack_sent = 0
                self.acks_owed = 0
            self.sid = sid
            for seq in sorted(self.pending):
                await self._send_msg(seq, self.pending[seq])
            self.connected.set()

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            m = self._decode(raw)
            t = m.get("t")
            if t == "msg":
                seq = self._check_int(m.get("seq"), 1)
                self._on_ack(self._check_int(m.get("ack"), 0))
                if "d" not in m:
                    raise ProtocolViolation(f"msg without d: {m!r}")
                if seq <= self.recv_last:
                    self.duplicates += 1  # rule 5: a resend, dropped silently
                elif seq == self.recv_last + 1:
                    self.recv_last = seq
                    self.acks_owed += 1
                    self.delivered.put_nowait(m["d"])
                    if self.acks_owed >= self.ack_every:
                        await self._flush_ack(ws)
                else:
                    raise ProtocolViolation(f"gap: seq {seq} after {self.recv_last}")
            elif t == "ack":
                self._on_ack(self._check_int(m.get("ack"), 0))
            else:
                raise ProtocolViolation(f"unexpected message {m!r}")

    def _on_ack(self, ack: int) -> None:
        if ack >= self.next_seq:
            raise ProtocolViolation(f"ack {ack} for a seq never sent ({self.next_seq - 1})")
        self._acked(ack)

    def _acked(self, ack: int) -> None:
        if ack <= self.server_acked:
            return
        self.server_acked = ack
        for s in [s for s in self.pending if s <= ack]:
            del self.pending[s]
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._acked_cond:
            self._acked_cond.notify_all()

    async def _send_msg(self, seq: int, d: Any) -> None:
        ws = self._ws
        if ws is None:
            return
        self.ack_sent = self.recv_last
        self.acks_owed = 0
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"t": "msg", "seq": seq, "ack": self.recv_last, "d": d}))

    async def _flush_ack(self, ws: Any) -> None:
        if self.recv_last > self.ack_sent:
            self.ack_sent = self.recv_last
            self.acks_owed = 0
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps({"t": "ack", "ack": self.recv_last}))

    async def _ack_timer(self, ws: Any) -> None:
        # rule 2: ack after `ack_every` messages or `ack_delay`, whichever is first
        while True:
            await asyncio.sleep(self.ack_delay)
            await self._flush_ack(ws)

    @staticmethod
    def _decode(raw: str | bytes) -> dict[str, Any]:
        try:
            m = json.loads(raw)
        except ValueError as exc:
            raise ProtocolViolation(f"malformed JSON {raw!r:.80}") from exc
        if not isinstance(m, dict):
            raise ProtocolViolation(f"not an object {raw!r:.80}")
        return m

    @staticmethod
    def _check_int(v: Any, lo: int) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= MAX_INT:
            raise ProtocolViolation(f"bad number {v!r}")
        return v
