"""The cooperating asyncio client.

A :class:`Client` keeps one logical session alive across any number of
WebSocket connections. It reconnects on its own (full-jitter backoff, server
hints honoured), resumes with ``hello``, resends what the server has not
acknowledged and drops what it already delivered, so the app sees every
message once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from clientlib.client.errors import (
    ClientClosed,
    ClientError,
    GaveUp,
    HandshakeRefused,
    SendBufferFull,
    ServerProtocolError,
    StartTimeout,
    TerminalClose,
    Unauthorized,
)
from clientlib.kernel.backoff import BackoffPolicy, reconnect_delay
from clientlib.kernel.client_session import NOTHING, ClientSession, Joined
from clientlib.kernel.session_protocol import (
    Action,
    CloseCode,
    CloseHint,
    ProtocolError,
    Welcome,
    close_action,
    decode,
    encode,
)

__all__ = [
    "Client",
    "ClientStats",
    "Event",
    "EventKind",
]

EventKind = Literal["connected", "disconnected", "moved", "resumed", "not_resumed", "stopped"]


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    code: int | None = None
    reason: str = ""
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class ClientStats:
    sent: int = 0
    received: int = 0
    acked: int = 0
    duplicates: int = 0
    connects: int = 0
    reconnects: int = 0
    resumes: int = 0
    not_resumed: int = 0
    disconnected_s: float = 0.0
    last_resume_ms: float | None = None  # from losing a connection to the next welcome


class Client:
    """A resumable session to one routing key.

    >>> async with Client("ws://127.0.0.1:9000/ws", "room:1") as c:   # doctest: +SKIP
    ...     await c.send({"text": "hi"}, wait_ack=True)
    ...     print(await c.recv())
    """

    def __init__(
        self,
        url: str | Sequence[str],
        key: str,
        *,
        token: str | None = None,
        backoff: BackoffPolicy | None = None,
        connect_timeout: float = 10.0,
        start_timeout: float = 30.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_pending: int = 1024,
        max_pending_bytes: int = 1 << 20,
        on_full: Literal["wait", "raise"] = "wait",
        recv_buffer: int = 1024,
        ack_every: int = 32,
        ack_delay: float = 0.05,
        max_message: int = 1 << 20,
        give_up_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ):
        if not key or len(key) > 256 or not key.isprintable():
            raise ValueError("key must be 1..256 printable characters")
        if on_full not in ("wait", "raise"):
            raise ValueError("on_full must be 'wait' or 'raise'")
        if give_up_after is not None and give_up_after <= 0:
            raise ValueError("give_up_after must be > 0 seconds (or None: never)")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("give at least one gateway URL")
        self.urls: list[str] = []
        for u in urls:
            parts = urlsplit(u)
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise ValueError(f"url must be ws:// or wss:// with a host, got {u!r}")
            query = "&".join(q for q in (parts.query, urlencode({"key": key})) if q)
            self.urls.append(urlunsplit(parts._replace(query=query)))
        # Clients of one app spread over its gateways; after a failure, the next one.
        self._url_index = int(rand() * len(self.urls)) % len(self.urls)
        self.key = key
        self.give_up_after = give_up_after
        self.token = token
        self.backoff = backoff or BackoffPolicy()
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.on_full = on_full
        self.ack_every = ack_every
        self.ack_delay = ack_delay
        self.max_message = max_message
        self.rand = rand
        self.stats = ClientStats()
        self.resumed: bool | None = None  # the last welcome's flag
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self._s = ClientSession(max_pending=max_pending, max_pending_bytes=max_pending_bytes)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._recv: asyncio.Queue[Any] = asyncio.Queue(maxsize=recv_buffer)
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._up = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._error: ClientError | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._lost_at: float | None = None  # when the last session's connection ended
        self._acked_seen = 0  # the outbox's acked count already reported in stats

    # ------------------------------------------------------------------ public API

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect and wait for the first session (or a terminal error)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self._wait_up(), self.start_timeout)
        except TimeoutError:
            await self.close()
            raise StartTimeout(f"no session with {self.url} within {self.start_timeout}s") from None

    async def _wait_up(self) -> None:
        while not self._up.is_set():
            if self._error is not None:
                raise self._error
            waiter = asyncio.ensure_future(self._up.wait())
            assert self._task is not None
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if self._task.done() and not self._up.is_set():
                raise self._error or ClientClosed("client stopped")

    async def send(self, obj: Any, *, wait_ack: bool = False) -> int:
        """Queue ``obj`` (JSON-able) for the backend; returns its sequence number.

        With ``wait_ack`` it returns once the backend has processed it. While
        the buffer is full it waits, or raises :class:`SendBufferFull`.
        """
        data = orjson.dumps(obj)
        while not self._s.outbox.has_room(len(data)):
            self._check_open()
            if self.on_full == "raise":
                raise SendBufferFull(f"{len(self._s.outbox)} messages await an ack")
            self._room.clear()
            await self._room.wait()
        self._check_open()
        seq: int = self._s.outbox.push(data)
        self.stats.sent += 1
        self._wake.set()
        if wait_ack:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((seq, fut))
            await fut
        return seq

    async def recv(self) -> Any:
        """The next message from the backend, exactly once and in order."""
        while True:
            if not self._recv.empty():
                return self._recv.get_nowait()
            self._check_open()
            getter = asyncio.ensure_future(self._recv.get())
            assert self._task is not None
            await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Any]:
        with contextlib.suppress(ClientClosed):
            while True:
                yield await self.recv()

    @property
    def pending(self) -> int:
        """Messages sent by the app and not yet acknowledged by the backend."""
        return len(self._s.outbox)

    @property
    def sid(self) -> str | None:
        """The session id (None before the first welcome)."""
        sid: str | None = self._s.sid
        return sid

    async def close(self) -> None:
        """Close the session for good (code 1000)."""
        self._closing = True
        if self._error is None:
            self._error = ClientClosed("client closed")
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(CloseCode.NORMAL)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_waiters()

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ connection loop

    @property
    def url(self) -> str:
        """The gateway URL the client uses now (or will try next)."""
        return self.urls[self._url_index]

    async def _run(self) -> None:
        attempt = 0
        down_since = time.monotonic()
        try:
            while not self._closing:
                sessions = self.stats.connects
                action, hint, lived = await self._connect_once()
                if self._error is not None or action is Action.STOP:
                    break
                had_session = self.stats.connects > sessions
                if had_session:
                    down_since = time.monotonic()
                if not had_session or action is Action.RECONNECT_WINDOW:
                    # A failed attempt, or a gateway draining or going away: another
                    # gateway (if there are several) is the better next try.
                    self._url_index = (self._url_index + 1) % len(self.urls)
                if (
                    self.give_up_after is not None
                    and time.monotonic() - down_since > self.give_up_after
                ):
                    self._error = GaveUp(f"no session for {self.give_up_after}s")
                    break
                attempt = 0 if lived >= self.backoff.stable_after else attempt + 1
                delay = reconnect_delay(
                    self.backoff, attempt - 1 if attempt else 0, action, hint, self.rand()
                )
                if delay is None:
                    break
                await asyncio.sleep(delay)
                self.stats.reconnects += 1
        except Exception as exc:  # a bug here must surface, not look like a clean stop
            self._error = ClientError(f"client failed: {exc!r}")
            self._error.__cause__ = exc
            raise
        finally:
            self._up.clear()
            self._emit(Event("stopped"))
            if self._error is None:
                self._error = ClientClosed("client stopped")
            self._room.set()
            self._fail_waiters()

    async def _connect_once(self) -> tuple[Action, CloseHint, float]:
        """One connection's life; returns what to do next and how long it lived."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                max_size=self.max_message,
                close_timeout=2,
            )
        except InvalidStatus as exc:
            return self._refused(exc)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI):
            return Action.RECONNECT, CloseHint(), 0.0
        self._ws = ws
        started = time.monotonic()
        try:
            await self._session(ws)
        except ProtocolError as exc:
            self._error = ServerProtocolError(str(exc))
            await ws.close(CloseCode.SESSION_PROTOCOL_VIOLATION)
        except TimeoutError:
            # No welcome in time (a slow or overloaded server): try again, with backoff.
            await ws.close(CloseCode.GOING_AWAY)
            return Action.RECONNECT, CloseHint(), 0.0
        except ConnectionClosed:
            pass
        finally:
            self._ws = None
            if self._up.is_set():
                self._lost_at = time.monotonic()
            self._up.clear()
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
        rcvd = ws.protocol.close_rcvd  # None: the connection dropped without a close frame
        code = rcvd.code if rcvd is not None else None
        reason = rcvd.reason if rcvd is not None else ""
        self._emit(Event("disconnected", code, reason))
        if code == CloseCode.MOVED:
            self._emit(Event("moved", code, reason))
        action = close_action(code)
        if action is Action.STOP and self._error is None and not self._closing:
            cls = Unauthorized if code == CloseCode.UNAUTHORIZED else TerminalClose
            self._error = cls(code or 0, reason)
        return action, CloseHint.decode(reason), time.monotonic() - started

    def _refused(self, exc: InvalidStatus) -> tuple[Action, CloseHint, float]:
        status = exc.response.status_code
        if status in (429, 503):
            retry = exc.response.headers.get("Retry-After", "")
            after = int(retry) * 1000 if retry.isdigit() else None
            return Action.RETRY_AFTER, CloseHint(after_ms=after), 0.0
        if status == 401:
            self._error = Unauthorized(CloseCode.UNAUTHORIZED, "HTTP 401")
            return Action.STOP, CloseHint(), 0.0
        if status in (400, 403, 404, 405, 426):
            body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            self._error = HandshakeRefused(status, body[:200])
            return Action.STOP, CloseHint(), 0.0
        return Action.RECONNECT, CloseHint(), 0.0

    async def _session(self, ws: ClientConnection) -> None:
        session = self._s
        await ws.send(encode(session.hello()), text=True)
        welcome = decode(await asyncio.wait_for(ws.recv(decode=False), self.connect_timeout))
        if not isinstance(welcome, Welcome):
            raise ProtocolError("expected welcome")
        self._welcome(welcome)
        self.stats.connects += 1
        if self._lost_at is not None:  # from losing the last connection to this welcome
            gap = time.monotonic() - self._lost_at
            self.stats.last_resume_ms = gap * 1000
            self.stats.disconnected_s += gap
            self._lost_at = None
        self._up.set()
        writer = asyncio.get_running_loop().create_task(self._writer(ws))
        try:
            while True:
                data, _ = session.receive(await ws.recv(decode=False))
                self._progress()
                if data is not NOTHING:
                    self.stats.received += 1
                    await self._recv.put(data)
                    self._ack_due()
        finally:
            self.stats.duplicates = session.duplicates
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer

    def _welcome(self, w: Welcome) -> None:
        joined, mapping = self._s.welcome(w)
        self.resumed = joined is Joined.RESUMED
        if joined is Joined.RESUMED:
            self._progress()
            self.stats.resumes += 1
            self._emit(Event("resumed"))
        elif joined is Joined.NOT_RESUMED:
            # The server lost our session: the unacked messages were renumbered and are
            # resent (their fate is unknown: the app is told).
            self.stats.not_resumed += 1
            self._emit(Event("not_resumed"))
            self._waiters = deque((mapping[s], f) for s, f in self._waiters if s in mapping)
            self._acked_seen = 0
            self._room.set()
        self._emit(Event("connected"))

    def _progress(self) -> None:
        """The outbox's acked mark moved: count it, wake senders and ``wait_ack`` callers."""
        acked = self._s.outbox.acked
        if acked > self._acked_seen:
            self.stats.acked += acked - self._acked_seen
            self._acked_seen = acked
            self._room.set()
        while self._waiters and self._waiters[0][0] <= acked:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def _ack_due(self) -> None:
        if self._s.unacked_received() >= self.ack_every:
            self._wake.set()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(self.ack_delay, self._ack_now)

    def _ack_now(self) -> None:
        self._ack_timer = None
        self._wake.set()

    async def _writer(self, ws: ClientConnection) -> None:
        session = self._s
        while True:
            for f in session.frames_due():
                await ws.send(f, text=True)
            self._wake.clear()
            if session.unsent() or session.unacked_received() > self.ack_every:
                continue
            await self._wake.wait()

    def _emit(self, ev: Event) -> None:
        if self.events.full():
            self.events.get_nowait()  # the app is not watching: keep the newest
        self.events.put_nowait(ev)

    def _fail_waiters(self) -> None:
        err = self._error or ClientClosed("client closed")
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: the app may not be awaiting it
