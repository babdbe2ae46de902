"""The data plane: one client socket spliced to one backend socket.

Each proxied connection is two asyncio protocols sharing a :class:`Link`.
Before ``101`` the client side parses the upgrade and the link opens the
backend hop; after it, bytes flow untouched both ways while a
:class:`~gateway.frames.FrameTracker` per direction reads only frame headers.

Flow control is the transports': when one side's write buffer passes its
high-water mark, reading from the other side pauses. A client that keeps its
buffer full for ``slow_consumer_s`` is cut off (close 4001).
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from clientlib.kernel.session_protocol import CloseCode, CloseHint
from gateway.frames import FrameTracker, close_frame
from gateway.handshake import (
    HandshakeError,
    Upgrade,
    UpgradeParser,
    http_response,
    read_answer,
    switching_protocols,
)
from gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    import h11

__all__ = [
    "BackendSide",
    "ClientSide",
    "ConnState",
    "ConnectionHost",
    "RelayLimits",
]


class ConnState(enum.IntEnum):
    """A proxied connection's life, in order (comparisons such as ``< RELAY`` are meant)."""

    HANDSHAKE = 0  # reading the client's upgrade
    CONNECTING = 1  # upgrade accepted, opening the backend hop
    RELAY = 2  # splicing bytes both ways
    CLOSING = 3  # a close frame was sent or seen; waiting for the sockets to go
    CLOSED = 4


# Module-level names: the hot path compares against these without an attribute lookup.
HANDSHAKE, CONNECTING, RELAY, CLOSING, CLOSED = ConnState


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """The settings a connection reads, taken once from the gateway's configuration."""

    max_handshake_bytes: int = 16384
    path_prefix: str = "/"
    key_header: str = "X-Routing-Key"
    require_key: bool = True
    max_frame_bytes: int = 1 << 20
    write_high_water: int = 64 * 1024
    handshake_timeout_s: float = 10.0
    slow_consumer_s: float = 10.0
    idle_timeout_s: float = 300.0
    control_frame_rate: float = 10.0  # pings and pongs per second from a client; 0: no limit
    control_frame_burst: int = 50
    close_linger_s: float = 5.0  # how long a closing peer may take to answer our close


class ConnectionHost(Protocol):
    """What a connection needs from the process that accepted it (the gateway)."""

    limits: RelayLimits
    metrics: GatewayMetrics
    loop: asyncio.AbstractEventLoop
    drain_hint: str
    tls: ssl.SSLContext | None  # TLS for clients, started by the connection itself

    def accepted(self, conn: ClientSide) -> HandshakeError | None:
        """Count a new connection; the refusal to send it, if it is over a limit."""

    def upgrade(self, conn: ClientSide, up: Upgrade) -> None:
        """Admit a parsed upgrade (HandshakeError refuses it) and open the backend hop."""

    def closed(self, conn: ClientSide, was_relaying: bool) -> None:
        """The connection is gone."""


def _keepalive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Data unacknowledged this long means the peer is gone (a blackholed link):
        # the kernel aborts instead of retransmitting for ~15 minutes.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)
    except OSError:
        pass


class ClientSide(asyncio.Protocol):
    """The client hop; owns the link's lifecycle."""

    __slots__ = (
        "b2c",
        "backend",
        "c2b",
        "close_code",
        "closed_by",
        "drain_pending",
        "host",
        "idle_mark",
        "idle_since",
        "key",
        "node",
        "parser",
        "paused_since",
        "peer_ip",
        "pending",
        "started",
        "state",
        "timer",
        "transport",
    )

    def __init__(self, host: ConnectionHost):
        self.host = host
        self.state = HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.backend: BackendSide | None = None
        lim = host.limits
        self.parser: UpgradeParser | None = None  # made once the connection is admitted
        self.c2b = FrameTracker(
            masked=True,
            max_frame=lim.max_frame_bytes,
            control_rate=lim.control_frame_rate,
            control_burst=lim.control_frame_burst,
        )
        self.b2c = FrameTracker(masked=False, max_frame=1 << 62)
        self.key = ""
        self.node = ""
        self.peer_ip = ""
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused_since: float | None = None
        self.closed_by = ""
        self.close_code: int | None = None
        self.pending = b""
        self.drain_pending = False
        self.idle_mark = 0
        self.idle_since = 0.0

    # ------------------------------------------------------------------ handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        self.started = time.monotonic()
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        host = self.host
        transport.set_write_buffer_limits(high=host.limits.write_high_water)
        host.metrics.accepted.inc()
        refusal = host.accepted(self)
        if refusal is not None:
            if host.tls is not None:
                # No TLS handshake (and no answer) for a connection refused at the door.
                host.metrics.rejected.labels(str(refusal.status)).inc()
                self.closed_by = "gateway"
                self.state = CLOSED
                transport.abort()
                return
            self.reject(refusal)
            return
        lim = host.limits
        self.parser = UpgradeParser(
            max_bytes=lim.max_handshake_bytes,
            path_prefix=lim.path_prefix,
            key_header=lim.key_header,
            require_key=lim.require_key,
        )
        self.timer = host.loop.call_later(lim.handshake_timeout_s, self.handshake_timeout)
        if host.tls is not None:
            # TLS starts only now, so a connection is counted (and timed) from its first
            # byte, not from the end of a handshake that a flood never finishes.
            self.start_tls(transport, host.tls)

    def start_tls(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        """Put TLS under this protocol. ``loop.start_tls`` swaps the protocol before its
        only ``await``; that must happen now, since the loop may read the ClientHello
        as soon as ``connection_made`` returns (Python 3.11 has no eager tasks): the
        coroutine is stepped here and resumed by its future, as a task would."""
        coro = self.host.loop.start_tls(
            raw,
            self,
            ctx,
            server_side=True,
            ssl_handshake_timeout=self.host.limits.handshake_timeout_s,
        )
        self._tls_step(raw, coro, None)

    def _tls_step(
        self,
        raw: asyncio.Transport,
        coro: Coroutine[Any, Any, asyncio.Transport | None],
        _done: object,
    ) -> None:
        try:
            waiting = coro.send(None)
        except StopIteration as finished:
            self._tls_done(raw, finished.value, None)
            return
        except Exception as exc:  # any failed handshake: the peer is gone
            self._tls_done(raw, None, exc)
            return
        if not asyncio.isfuture(waiting):  # start_tls awaits one future; anything else: stop
            coro.close()
            self._tls_done(raw, None, None)
            return
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(partial(self._tls_step, raw, coro))

    def _tls_done(
        self, raw: asyncio.Transport, tls: asyncio.Transport | None, exc: Exception | None
    ) -> None:
        if tls is None or self.state == CLOSED or raw.is_closing() or tls.is_closing():
            # Gone during the handshake: the TLS layer does not report that to us.
            raw.abort()
            self.connection_lost(exc)
            return
        self.transport = tls
        tls.set_write_buffer_limits(high=self.host.limits.write_high_water)

    def handshake_timeout(self) -> None:
        if self.state < RELAY:
            self.host.metrics.rejected.labels("408").inc()
            self.closed_by = "timeout"
            self.abort()

    def data_received(self, data: bytes) -> None:
        # The hot path, once per chunk: check the frame headers, pass the bytes on.
        if self.state is RELAY:
            code = self.c2b.feed(data)
            if code:
                self.violation(code)
                return
            self.backend.transport.write(data)  # type: ignore[union-attr]  # set in RELAY
            return
        if self.state == HANDSHAKE:
            self.handshake_data(data)
        elif self.state == CONNECTING:
            # A client must wait for 101 (RFC 6455 §4.1); keep a bounded amount anyway.
            self.pending += data
            if len(self.pending) > self.host.limits.max_handshake_bytes:
                self.reject(HandshakeError(400, "data before the handshake completed"))
        elif (
            self.state == CLOSING
            and self.transport is not None
            and (self.c2b.feed(data) or self.c2b.close_seen)
        ):
            # After our close frame, the client's answer (or a broken frame) ends it.
            self.transport.close()

    def handshake_data(self, data: bytes) -> None:
        if self.parser is None:
            return  # refused at the door
        if not self.parser.fed:
            self.started = time.monotonic()  # the upgrade's first byte (after TLS, if any)
        try:
            up = self.parser.feed(data)
            if up is None:
                return
            self.pending = self.parser.trailing
            self.parser = None
            self.key = up.key
            self.state = CONNECTING
            self.host.upgrade(self, up)
        except HandshakeError as exc:
            self.reject(exc)

    def reject(self, exc: HandshakeError) -> None:
        self.host.metrics.rejected.labels(str(exc.status)).inc()
        self.closed_by = "gateway"
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(http_response(exc.status, exc.reason, exc.headers))
            self.transport.close()
        self.state = CLOSED

    def start_relay(
        self, backend: BackendSide, headers: list[tuple[bytes, bytes]], trailing: bytes
    ) -> None:
        """The backend said 101: pass it on and start splicing."""
        if self.state != CONNECTING or self.transport is None or self.transport.is_closing():
            backend.transport.abort()
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.backend = backend
        self.node = backend.node
        self.state = RELAY
        metrics = self.host.metrics
        metrics.upgraded.inc()
        metrics.upgrade_seconds.observe(time.monotonic() - self.started)
        _keepalive(self.transport)
        self.transport.write(switching_protocols(headers))
        backend.relaying = True
        early, backend.early = trailing + backend.early, b""
        if early:
            self.backend_data(early)
        backend.transport.resume_reading()
        if self.pending:
            pending, self.pending = self.pending, b""
            self.data_received(pending)

    # ------------------------------------------------------------------ relay

    def violation(self, code: int) -> None:
        """The client broke the framing rules (1002), sent too many control frames (1008)
        or a frame too big (1009)."""
        self.host.metrics.violations.labels(str(code)).inc()
        self.closed_by = "gateway"
        self.close_code = code
        if self.transport is not None:
            if self.b2c.at_boundary:
                self.transport.write(close_frame(code))
            self.transport.close()
        self.close_backend(CloseCode.GOING_AWAY)
        self.state = CLOSING

    def close_backend(self, code: int) -> None:
        b = self.backend
        if b is not None and not b.transport.is_closing():
            if self.c2b.at_boundary:
                b.transport.write(close_frame(code, mask=os.urandom(4)))
            b.transport.close()

    def drain_close(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Close with our own frame at a frame boundary of the backend→client stream."""
        if self.state != RELAY:
            if self.state < RELAY:
                self.reject(HandshakeError(503, "gateway draining", (("Retry-After", "1"),)))
            return
        if not self.b2c.at_boundary:
            self.drain_pending = True
            return
        assert self.transport is not None
        self.drain_pending = False
        self.closed_by = "gateway"
        self.close_code = code
        self.transport.write(close_frame(code, reason))
        self.close_backend(CloseCode.GOING_AWAY)
        self.state = CLOSING
        # The client answers our close; if it does not, stop waiting.
        self.host.loop.call_later(self.host.limits.close_linger_s, self.abort)

    def backend_data(self, data: bytes) -> None:
        """Bytes from the backend (:meth:`BackendSide.data_received` inlines this)."""
        if self.state is not RELAY:
            return  # after our close frame, nothing more may go to the client
        assert self.transport is not None
        self.transport.write(data)
        if self.b2c.feed(data):
            self.backend_broke()
        elif self.drain_pending:
            self.drain_at_boundary()

    def backend_broke(self) -> None:
        """The backend broke framing: stop relaying and close both hops."""
        self.closed_by = "backend"
        self.abort()

    def drain_at_boundary(self) -> None:
        if self.b2c.at_boundary:
            self.drain_close(CloseCode.GOING_AWAY, self.host.drain_hint)

    def pause_writing(self) -> None:
        # The client is not reading fast enough: stop reading from its backend.
        if self.backend is not None:
            self.backend.transport.pause_reading()
        self.paused_since = time.monotonic()

    def resume_writing(self) -> None:
        self.paused_since = None
        if self.backend is not None and not self.backend.transport.is_closing():
            self.backend.transport.resume_reading()

    def tick(self, now: float) -> None:
        """Housekeeping, once a second: the client's control-frame budget, cut a slow
        consumer, close an idle connection."""
        lim = self.host.limits
        self.c2b.refill(now)
        if self.paused_since is not None and now - self.paused_since > lim.slow_consumer_s:
            self.cut_slow_consumer()
        elif self.state == RELAY:
            mark = self.c2b.bytes + self.b2c.bytes
            if mark != self.idle_mark or not self.idle_since:
                self.idle_mark = mark
                self.idle_since = now
            elif now - self.idle_since >= lim.idle_timeout_s:
                self.host.metrics.idle_closed.inc()
                self.drain_close(CloseCode.IDLE_TIMEOUT, "")

    def cut_slow_consumer(self) -> None:
        self.host.metrics.slow_consumers.inc()
        self.closed_by = "gateway"
        self.close_code = CloseCode.SLOW_CONSUMER
        if self.transport is not None and self.b2c.at_boundary:
            self.transport.write(close_frame(CloseCode.SLOW_CONSUMER))
        self.close_backend(CloseCode.GOING_AWAY)
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.backend is not None:
            self.backend.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == CLOSED and self.transport is None:
            return  # already told (a TLS handshake that failed is reported twice)
        if self.timer is not None:
            self.timer.cancel()
        if not self.closed_by:
            self.closed_by = "client"
        was_relaying = self.state in (RELAY, CLOSING)
        self.state = CLOSED
        b = self.backend
        if b is not None and not b.transport.is_closing():
            if self.c2b.close_seen:
                b.transport.close()  # the close frame went through; let it flush
            else:
                b.transport.abort()
        if self.transport is not None:
            self.transport = None
        self.host.closed(self, was_relaying)


class BackendSide(asyncio.Protocol):
    """The backend hop: first reads the upgrade answer, then relays to the client."""

    __slots__ = ("answer", "client", "conn", "early", "node", "relaying", "transport")

    def __init__(self, client: ClientSide, node: str, conn: h11.Connection):
        self.client = client
        self.node = node
        self.conn: h11.Connection | None = conn
        self.answer: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = (
            client.host.loop.create_future()
        )
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.relaying = False
        self.early = b""  # bytes after the 101, before the client side took over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        transport.set_write_buffer_limits(high=self.client.host.limits.write_high_water)
        _keepalive(transport)

    def data_received(self, data: bytes) -> None:
        if self.relaying:
            # The hot path, once per chunk: ClientSide.backend_data, inlined (one Python
            # call less per chunk).
            c = self.client
            if c.state is RELAY:
                c.transport.write(data)  # type: ignore[union-attr]  # set in RELAY
                if c.b2c.feed(data):
                    c.backend_broke()
                elif c.drain_pending:
                    c.drain_at_boundary()
            return
        if self.conn is None:
            # The answer is in, the relay not started yet: keep the frames, bounded.
            self.early += data
            if len(self.early) > self.client.host.limits.write_high_water:
                self.transport.pause_reading()
            return
        try:
            ans = read_answer(self.conn, data)
        except HandshakeError:
            if not self.answer.done():
                self.answer.set_result((502, [], b""))
            return
        if ans is not None and not self.answer.done():
            self.conn = None
            self.answer.set_result((ans.status, ans.headers, ans.trailing))

    def pause_writing(self) -> None:
        t = self.client.transport
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.client.transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_result((502, [], b""))
            return
        c = self.client
        if c.backend is not self:
            return
        if c.state == RELAY:
            if not c.closed_by:
                # Whoever sent the first close frame closed the connection.
                c.closed_by = "client" if c.c2b.close_seen else "backend"
            if c.b2c.close_seen:
                c.close_code = c.b2c.close_code
            t = c.transport
            if t is not None:
                if not c.b2c.close_seen and c.b2c.at_boundary:
                    # The backend vanished without a close frame: tell the client to come back.
                    t.write(close_frame(CloseCode.GOING_AWAY, CloseHint(window_ms=1000).encode()))
                t.close()
                # A client that never takes the rest of its buffer must not linger.
                c.host.loop.call_later(c.host.limits.close_linger_s, c.abort)
            c.state = CLOSING
