"""The backend's WebSocket server: a thin websockets shell around :class:`SessionConn`.

An upgrade is served only if a gateway vouched for it: ``X-Route-Proof`` signs
the key, slot, epoch and this node's id with this node's credential (see
:mod:`clientlib.kernel.credentials`). Without one it gets ``403``, unless the
node runs in ``direct`` mode (development: any client may connect with
``?key=``). Then the node's serving rule decides (``421`` if it does not serve
the key at that epoch; the gateway re-routes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import weakref
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from backend.metrics import BackendMetrics
from backend.node import Node, NotOwner
from backend.service import ServiceQueue
from backend.session_conn import SessionConn
from clientlib.kernel.credentials import unquote_key, verify_claim
from clientlib.kernel.routing import MAX_KEY_LEN, slot_of
from clientlib.kernel.session_protocol import CloseCode

__all__ = ["FAST_WRITE_LIMIT", "HELLO_TIMEOUT_S", "BackendServer", "Route", "route_of"]

log = structlog.get_logger("backend.server")

HELLO_TIMEOUT_S = 10.0
# Below this many bytes buffered for a connection, replies are framed and written
# without a drain (nothing to wait for); above it, send() applies its flow control.
FAST_WRITE_LIMIT = 32 * 1024
# A connection whose unread output passes this is cut (a client flooding pings and
# never reading makes websockets queue pongs outside send()'s flow control).
MAX_WRITE_BUFFER = 4 << 20


def _dead(item: tuple[SessionConn, bytes | str]) -> bool:
    return item[0].closing is not None or item[0].gone


def _is_ack(raw: bytes | str) -> bool:
    """A standalone ack as clients send it (any other shape counts as work)."""
    if isinstance(raw, bytes):
        return raw.startswith(b'{"t":"ack"')
    return raw.startswith('{"t":"ack"')


class Route:
    """What an upgrade asks for, from the gateway's headers (or ``?key=`` when direct)."""

    __slots__ = ("epoch", "key", "proof", "slot")

    def __init__(self, key: str, slot: int | None, epoch: int | None, proof: str | None):
        self.key, self.slot, self.epoch, self.proof = key, slot, epoch, proof


def route_of(path: str, headers: Headers) -> Route:
    """The route an upgrade asks for. ValueError if it is malformed."""
    raw = headers.get("X-Route-Key")
    if raw is not None:
        key = unquote_key(raw)
    else:
        keys = parse_qs(urlsplit(path).query).get("key")
        key = keys[0] if keys else ""
    if not key or len(key) > MAX_KEY_LEN or not key.isprintable():
        raise ValueError("missing or invalid routing key (use ?key=…)")
    slot = headers.get("X-Route-Slot")
    epoch = headers.get("X-Route-Epoch")
    return Route(
        key,
        int(slot) if slot else None,
        int(epoch) if epoch else None,
        headers.get("X-Route-Proof"),
    )


class BackendServer:
    def __init__(
        self,
        node: Node,
        *,
        max_message: int = 1 << 20,
        credential: str | None = None,
        direct: bool = True,
        node_held_bytes: int = 64 << 20,
        max_items: int = 65536,
        service_time_us: float = 0.0,
    ):
        self.node = node
        self.max_items = max_items
        self.max_message = max_message
        self.credential = credential
        self.direct = direct
        self.node_held_bytes = node_held_bytes
        # Epoch checked at upgrade, read by the handler; weak so a handshake that fails
        # after process_request leaves nothing behind.
        self._routes: weakref.WeakKeyDictionary[ServerConnection, tuple[str, int]] = (
            weakref.WeakKeyDictionary()
        )
        self.server: Server | None = None
        self.conns: dict[ServerConnection, SessionConn] = {}
        self.refused = {"unvouched": 0, "not_owner": 0, "bad_request": 0}
        self.metrics = BackendMetrics(node, self)
        # Sessions whose connection here ended without ending them: sid → when, for the
        # reconnect-to-resume histogram (kept for session_ttl_s, like the session).
        self._detached: dict[str, float] = {}
        # The node's finite capacity (docs/backend.md, service_time_us): client messages
        # wait their turn in one FIFO served at a fixed time each; None: served at once.
        self.service: ServiceQueue[tuple[SessionConn, bytes | str]] | None = (
            ServiceQueue(service_time_us / 1e6) if service_time_us > 0 else None
        )
        self._service_timer: asyncio.TimerHandle | None = None
        self._busy_mark = (0.0, 0.0)  # (server busy seconds, loop time) at the last probe

    @property
    def connection_count(self) -> int:
        return len(self.conns)

    async def start(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> Server:
        if self.node.journaling:
            # Group commit: what this turn of the event loop changed is written in one
            # store transaction at the start of the next, then the held output goes out.
            loop = asyncio.get_running_loop()
            commit = self.node.commit

            def schedule() -> None:
                loop.call_soon(commit)

            self.node.schedule_commit = schedule
        self.server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=self.max_message,
            max_queue=4,  # frames websockets buffers before we read them (we always read)
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            server_header=None,
            ssl=tls,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return conn.respond(HTTPStatus.OK, "ok\n")
        if request.path == "/metrics":
            # Counts only (no keys, no addresses), like /healthz open to whoever reaches
            # the port, which only the gateways and the operators should.
            answer = conn.respond(HTTPStatus.OK, generate_latest(self.metrics.registry).decode())
            del answer.headers["Content-Type"]
            answer.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return answer
        try:
            route = route_of(request.path, request.headers)
        except ValueError as exc:
            self.refused["bad_request"] += 1
            return conn.respond(HTTPStatus.BAD_REQUEST, f"{exc}\n")
        claimed: int | None = None
        if route.proof is not None and self.credential is not None:
            if route.slot != slot_of(route.key) or route.epoch is None:
                self.refused["unvouched"] += 1
                return conn.respond(HTTPStatus.FORBIDDEN, "route headers do not match\n")
            claim = verify_claim(
                self.credential,
                key=route.key,
                slot=route.slot,
                epoch=route.epoch,
                node=self.node.node_id,
                proof=route.proof,
                now_ms=int(time.time() * 1000),
            )
            if claim is None:
                self.refused["unvouched"] += 1
                return conn.respond(HTTPStatus.FORBIDDEN, "route proof refused\n")
            claimed = claim.epoch
        elif not self.direct:
            self.refused["unvouched"] += 1
            return conn.respond(
                HTTPStatus.FORBIDDEN, "this backend serves only what a gateway vouches for\n"
            )
        try:
            epoch = self.node.serving_epoch(route.key, claimed)
        except NotOwner as exc:
            self.refused["not_owner"] += 1
            self.node.stats["refused_not_owner"] += 1
            return conn.respond(HTTPStatus.MISDIRECTED_REQUEST, f"not the owner: {exc}\n")
        self._routes[conn] = (route.key, epoch)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        key, epoch = self._routes.pop(ws)
        # Bound once per connection: every log line of this session carries them.
        with structlog.contextvars.bound_contextvars(
            conn_id=ws.id.hex[:12], key=key, node=self.node.node_id
        ):
            await self._session(ws, key, epoch)

    async def _session(self, ws: ServerConnection, key: str, epoch: int) -> None:
        wake = asyncio.Event()
        lock = asyncio.Lock()  # one flush at a time keeps frames in seq order
        conn = SessionConn(
            self.node,
            key,
            epoch,
            wake.set,
            max_held_bytes=self.max_message,
            node_held_bytes=self.node_held_bytes,
            max_items=self.max_items,
        )
        self.conns[ws] = conn
        writer = asyncio.get_running_loop().create_task(self._writer(ws, conn, wake, lock))
        try:
            resumed = self.node.stats["resumed"]
            conn.receive(await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT_S))
            if conn.session is not None:
                self._attached(conn.session.sid, self.node.stats["resumed"] > resumed)
            while conn.closing is None:
                # Reply from this task when nobody is writing: no hop through the writer.
                if lock.locked():
                    wake.set()
                else:
                    async with lock:
                        await self._flush(ws, conn)
                if conn.closing is not None:
                    break
                raw = await ws.recv()
                if self.service is None or _is_ack(raw):
                    conn.receive(raw)  # an ack is no work: it is applied at once
                else:
                    self._enqueue(conn, raw)
        except TimeoutError:
            conn.close(CloseCode.SESSION_PROTOCOL_VIOLATION, "")
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if conn.closing is not None and ws.state is State.OPEN:
                await ws.close(*conn.closing)
            rcvd = ws.protocol.close_rcvd
            conn.closed(rcvd.code if rcvd is not None else None)
            del self.conns[ws]
            session = conn.session
            if session is not None and session.detached_at is not None and session.wire is None:
                self._detached[session.sid] = time.monotonic()

    # ------------------------------------------------------------------ the service queue

    def _enqueue(self, conn: SessionConn, raw: bytes | str) -> None:
        service = self.service
        assert service is not None
        loop = asyncio.get_running_loop()
        conn.queue(len(raw))
        if conn.closing is not None:
            conn.dequeue(len(raw))
            return
        service.offer(loop.time(), (conn, raw))
        self.node.meter.arrive(conn.key, slot_of(conn.key))
        if self._service_timer is None:
            self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.service is not None
        at = self.service.next_at(_dead)
        self._service_timer = None if at is None else loop.call_at(at, self._serve)

    def _serve(self) -> None:
        """The server finished what was due: process it, in arrival order."""
        service = self.service
        assert service is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        done, dropped = service.due(now, _dead)
        meter = self.node.meter
        for conn, raw in dropped:
            conn.dequeue(len(raw))
        for arrival, (conn, raw) in done:
            conn.dequeue(len(raw))
            if conn.closing is None and not conn.gone:
                conn.receive(raw)
                meter.sojourn(now - arrival)
                conn.notify()  # its reply (or a close) is written by the connection's writer
        self._arm(loop)

    def busy(self) -> float | None:
        """The service queue's busy fraction since the last call (None: no queue)."""
        if self.service is None:
            return None
        now = asyncio.get_running_loop().time()
        busy_s, then = self._busy_mark
        self._busy_mark = (self.service.busy_s, now)
        if then == 0.0:
            return 0.0
        return (self.service.busy_s - busy_s) / max(now - then, 1e-6)

    def _attached(self, sid: str, resumed: bool) -> None:
        """A hello was answered: time a resume of a session whose connection ended here."""
        detached = self._detached.pop(sid, None)
        if detached is not None and resumed:
            self.metrics.resume_seconds.observe(time.monotonic() - detached)

    async def _writer(
        self, ws: ServerConnection, conn: SessionConn, wake: asyncio.Event, lock: asyncio.Lock
    ) -> None:
        """Write what the node queued for this connection while the reader waits for input."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await wake.wait()
                wake.clear()
                async with lock:
                    await self._flush(ws, conn)
                if conn.closing is not None:
                    await ws.close(*conn.closing)
                    return

    @staticmethod
    async def _flush(ws: ServerConnection, conn: SessionConn) -> None:
        proto, transport = ws.protocol, ws.transport
        for f in conn.frames_due():
            if proto.state is State.OPEN and transport.get_write_buffer_size() < FAST_WRITE_LIMIT:
                # Through websockets' sans-I/O layer straight to the socket: the same
                # framing as send(), without its per-call flow-control machinery.
                proto.send_text(f)
                for data in proto.data_to_send():
                    transport.write(data)
            else:
                await ws.send(f, text=True)

    def sweep(self) -> None:
        """Once a second: cut connections whose unread output grew past its bound, forget
        detach times older than a session lives."""
        if self._detached:
            horizon = time.monotonic() - self.node.config.session_ttl_s
            self._detached = {s: t for s, t in self._detached.items() if t > horizon}
        for ws in list(self.conns):
            transport = ws.transport
            if transport is not None and transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                log.warning("write_buffer_exceeded", bytes=transport.get_write_buffer_size())
                transport.abort()

    async def close_all(self, code: int, reason: str = "") -> None:
        await asyncio.gather(
            *(ws.close(code, reason) for ws in list(self.conns)), return_exceptions=True
        )
