"""The backend's WebSocket server: a thin websockets shell around :class:`Node`."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from backend.node import Node, NotOwner, Session
from clientlib.kernel.replay import due_frames
from clientlib.kernel.routing import MAX_KEY_LEN
from clientlib.kernel.session_protocol import (
    Ack,
    CloseCode,
    Hello,
    Msg,
    ProtocolError,
    decode,
    encode,
)

__all__ = [
    "FAST_WRITE_LIMIT",
    "HELLO_TIMEOUT_S",
    "MAX_HELD",
    "BackendServer",
    "WsWire",
    "route_of",
]

log = structlog.get_logger("backend.server")

HELLO_TIMEOUT_S = 10.0
# Messages read but held while a session's outbox is above half full. Reading
# never stops (acks arrive on the same stream); the client's own window of
# unacked messages (default 1024) keeps this small.
MAX_HELD = 4096
# Below this many bytes buffered for a connection, replies are framed and written
# without a drain (nothing to wait for); above it, send() applies its flow control.
FAST_WRITE_LIMIT = 32 * 1024


class WsWire:
    """Connects a :class:`Session` to one websockets connection."""

    __slots__ = ("closing", "conn", "deferred", "event", "lock")

    def __init__(self, conn: ServerConnection):
        self.conn = conn
        self.event = asyncio.Event()
        self.lock = asyncio.Lock()  # one flush at a time keeps frames in seq order
        self.closing = False
        self.deferred = False  # the reader is processing input and flushes right after

    def wake(self) -> None:
        if not self.deferred:
            self.event.set()

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().create_task(self.conn.close(code, reason))


def route_of(path: str, headers: Headers) -> tuple[str, int | None, int | None]:
    """(key, slot, epoch) from the gateway's headers, else from ``?key=``. ValueError if bad."""
    key = headers.get("X-Route-Key")
    if key is None:
        keys = parse_qs(urlsplit(path).query).get("key")
        key = keys[0] if keys else None
    if not key or len(key) > MAX_KEY_LEN or not key.isprintable():
        raise ValueError("missing or invalid routing key (use ?key=…)")
    slot = headers.get("X-Route-Slot")
    epoch = headers.get("X-Route-Epoch")
    return key, int(slot) if slot else None, int(epoch) if epoch else None


class BackendServer:
    def __init__(self, node: Node, *, max_message: int = 1 << 20):
        self.node = node
        self.max_message = max_message
        # Route checked at upgrade, read by the handler; weak so a handshake that fails
        # after process_request leaves nothing behind.
        self._routes: weakref.WeakKeyDictionary[ServerConnection, tuple[str, int]] = (
            weakref.WeakKeyDictionary()
        )
        self.server: Server | None = None
        self.conns: set[ServerConnection] = set()

    async def start(self, host: str, port: int) -> Server:
        self.server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=self.max_message,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            server_header=None,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return conn.respond(HTTPStatus.OK, "ok\n")
        try:
            key, slot, epoch = route_of(request.path, request.headers)
        except ValueError as exc:
            return conn.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        try:
            epoch_ok = self.node.check_owner(key, slot, epoch)
        except NotOwner as exc:
            self.node.stats["refused_not_owner"] += 1
            return conn.respond(HTTPStatus.MISDIRECTED_REQUEST, f"not the owner: {exc}\n")
        self._routes[conn] = (key, epoch_ok)
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        key, epoch = self._routes.pop(conn)
        self.conns.add(conn)
        # Bound once per connection: every log line of this session carries them.
        with structlog.contextvars.bound_contextvars(
            conn_id=conn.id.hex[:12], key=key, node=self.node.config.node_id
        ):
            try:
                await self._session(conn, key, epoch)
            finally:
                self.conns.discard(conn)

    async def _session(self, conn: ServerConnection, key: str, epoch: int) -> None:
        node = self.node
        try:
            first = await asyncio.wait_for(conn.recv(decode=False), HELLO_TIMEOUT_S)
            hello = decode(first)
            if not isinstance(hello, Hello):
                raise ProtocolError("first envelope must be hello")
        except (ProtocolError, TimeoutError):
            await conn.close(CloseCode.SESSION_PROTOCOL_VIOLATION, "")
            return
        except ConnectionClosed:
            return
        wire = WsWire(conn)
        try:
            session, welcome = node.attach(key, epoch, hello, wire)
        except NotOwner:
            await conn.close(CloseCode.NOT_OWNER, "")
            return
        writer = asyncio.get_running_loop().create_task(self._writer(conn, session, wire))
        try:
            await conn.send(encode(welcome), text=True)
            wire.wake()
            held: deque[Msg] = deque()  # read but not processed: the outbox is too full
            while True:
                env = decode(await conn.recv(decode=False))
                if type(env) is Msg:
                    node.receive_ack(session, env.ack)
                    if not held and node.has_room(session):  # the common case
                        wire.deferred = True
                        try:
                            node.process(session, env)
                        finally:
                            wire.deferred = False
                    else:
                        held.append(env)
                elif type(env) is Ack:
                    node.receive_ack(session, env.ack)
                else:
                    raise ProtocolError("unexpected envelope after hello")
                # Back-pressure: a client that does not ack our replies gets its own
                # input processed no faster than it takes the output.
                wire.deferred = True
                try:
                    while held and node.has_room(session):
                        node.process(session, held.popleft())
                finally:
                    wire.deferred = False
                if len(held) > MAX_HELD:
                    # Beyond any sane client window: a client ignoring its own limit.
                    wire.close(CloseCode.SLOW_CONSUMER, "")
                    return
                # Reply from this task when nobody is writing: no hop through the writer.
                if wire.lock.locked():
                    wire.event.set()
                elif not wire.closing:
                    async with wire.lock:
                        await self._flush(conn, session)
        except ProtocolError as exc:
            log.info("session_protocol_violation", error=str(exc))
            wire.close(CloseCode.SESSION_PROTOCOL_VIOLATION, "")
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            node.detach(session, wire)

    async def _writer(self, conn: ServerConnection, session: Session, wire: WsWire) -> None:
        """Write what the session's outbox holds beyond what this connection has seen."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await wire.event.wait()
                wire.event.clear()
                if wire.closing:
                    return
                async with wire.lock:
                    await self._flush(conn, session)

    @staticmethod
    async def _flush(conn: ServerConnection, session: Session) -> None:
        """Send the outbox beyond what this connection has seen, or a standalone ack."""
        frames, session.written, session.ack_sent = due_frames(
            session.outbox, session.written, session.inbox.last, session.ack_sent
        )
        proto, transport = conn.protocol, conn.transport
        for f in frames:
            if proto.state is State.OPEN and transport.get_write_buffer_size() < FAST_WRITE_LIMIT:
                # Through websockets' sans-I/O layer straight to the socket: the same
                # framing as send(), without its per-call flow-control machinery.
                proto.send_text(f)
                for data in proto.data_to_send():
                    transport.write(data)
            else:
                await conn.send(f, text=True)

    async def close_all(self, code: int, reason: str = "") -> None:
        await asyncio.gather(
            *(c.close(code, reason) for c in list(self.conns)), return_exceptions=True
        )
