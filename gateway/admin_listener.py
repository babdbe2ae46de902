"""The admin port's listener: a bounded number of connections, none left waiting long.

aiohttp serves the admin API and the backends' control sockets; this wraps each
of its connections to bound what a process that can reach the port may hold:

- at most ``limit`` connections other than authenticated control sockets; a new
  one beyond it closes the connection that has waited longest for a request (so
  a quick client always gets in, whoever holds the rest), or is refused when
  every one is busy with a request;
- a connection must send a complete request head within ``timeout_s`` of
  connecting or of its previous request (idle keep-alive included), and a
  request's body within ``timeout_s`` (the admin API's middleware reads it).

Control sockets count only until their secret is checked: a backend's
long-lived socket never takes room from operators, and a stranger's never
gets out of the count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import structlog

__all__ = ["AdminGuard", "GuardedConnection"]

log = structlog.get_logger("gateway.admin")


class GuardedConnection(asyncio.Protocol):
    """Counts one admin connection; the real protocol is made when its first bytes come
    (a connection that never speaks costs a descriptor and nothing more)."""

    __slots__ = ("admitted", "factory", "guard", "inner", "transport")

    def __init__(self, guard: AdminGuard, factory: Callable[[], asyncio.Protocol]):
        self.guard = guard
        self.factory = factory
        self.admitted = False
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.admitted = self.guard.opened(self)
        if not self.admitted:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is None:
            if not self.admitted or self.transport is None:
                return
            inner = self.inner = self.factory()
            inner.connection_made(self.transport)
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.lost(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class AdminGuard:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        limit: int,
        timeout_s: float,
        dropped: Callable[[str], None] = lambda reason: None,
    ):
        self.loop = loop
        self.limit = limit
        self.timeout_s = timeout_s
        self.dropped = dropped  # told each connection closed: evicted, refused or timeout
        self.idle: dict[GuardedConnection, float] = {}  # waiting for a request, oldest first
        self.busy: set[GuardedConnection] = set()  # a request in progress
        self.control: set[GuardedConnection] = set()  # authenticated control sockets
        self._by_transport: dict[asyncio.BaseTransport, GuardedConnection] = {}
        self._sweeper = loop.call_later(self._period, self._sweep)

    @property
    def _period(self) -> float:
        return min(1.0, self.timeout_s / 4)

    @property
    def counted(self) -> int:
        return len(self.idle) + len(self.busy)

    def opened(self, conn: GuardedConnection) -> bool:
        """Count a new connection; False: refuse it (every counted one is busy)."""
        if self.counted >= self.limit:
            if not self.idle:
                self.dropped("refused")
                return False
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            self.dropped("evicted")
            oldest.close()
        self.idle[conn] = self.loop.time()
        assert conn.transport is not None
        self._by_transport[conn.transport] = conn
        return True

    def lost(self, conn: GuardedConnection) -> None:
        self.idle.pop(conn, None)
        self.busy.discard(conn)
        self.control.discard(conn)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)

    def begin(self, transport: asyncio.BaseTransport | None) -> GuardedConnection | None:
        """A request head arrived on this connection: it is busy, not waiting."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None and self.idle.pop(conn, None) is not None:
            self.busy.add(conn)
        return conn

    def end(self, conn: GuardedConnection | None) -> None:
        """The request is answered: the connection waits for its next one (or closes)."""
        if conn is not None and (conn in self.busy or conn in self.control):
            self.busy.discard(conn)
            self.control.discard(conn)
            self.idle[conn] = self.loop.time()

    def to_control(self, conn: GuardedConnection | None) -> None:
        """This request is a control socket whose secret checked out: no longer counted."""
        if conn is not None and conn in self.busy:
            self.busy.discard(conn)
            self.control.add(conn)

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn, since in list(self.idle.items()):
            if now - since < self.timeout_s:
                break  # the rest waited less
            del self.idle[conn]
            self.dropped("timeout")
            conn.close()
        self._sweeper = self.loop.call_later(self._period, self._sweep)

    def close(self) -> None:
        self._sweeper.cancel()
