"""The gateway process: listeners, routing of upgrades, drain, housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from clientlib.kernel.credentials import RouteClaim, sign_claim
from clientlib.kernel.session_protocol import CloseCode, CloseHint
from clientlib.kernel.settings import parse_hostport
from gateway.auth import TokenVerifier
from gateway.config import GatewayConfig
from gateway.handshake import HandshakeError, Upgrade, forward_request
from gateway.metrics import GatewayMetrics
from gateway.relay import CONNECTING, RELAY, BackendSide, ClientSide, RelayLimits
from gateway.route_source import RouteSource

__all__ = ["Gateway", "backend_ssl_context", "raise_fd_limit"]

log = structlog.get_logger("gateway")

FD_RESERVE = 64  # descriptors kept for listeners, logs, the state, control sockets
ROUTE_GRACE_S = 3.0  # after a table change, relays to a node that lost their key are cut


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def backend_ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The TLS client context for the backend hop, or None (plain TCP)."""
    if not config.backend_tls:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.backend_tls_ca)
    if config.backend_tls_cert and config.backend_tls_key:
        ctx.load_cert_chain(config.backend_tls_cert, config.backend_tls_key)
    return ctx


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        directory: RouteSource,
        *,
        metrics: GatewayMetrics | None = None,
    ):
        self.config = config
        self.limits = RelayLimits(
            max_handshake_bytes=config.max_handshake_bytes,
            path_prefix=config.path_prefix,
            key_header=config.key_header,
            require_key=config.require_key,
            max_frame_bytes=config.max_frame_bytes,
            write_high_water=config.write_high_water,
            handshake_timeout_s=config.handshake_timeout_s,
            slow_consumer_s=config.slow_consumer_s,
            idle_timeout_s=config.idle_timeout_s,
            control_frame_rate=config.control_frame_rate,
            control_frame_burst=config.control_frame_burst,
        )
        self.directory = directory
        self.metrics = metrics or GatewayMetrics()
        self.loop = asyncio.get_running_loop()
        self.conns: set[ClientSide] = set()
        self.per_ip: dict[str, int] = {}  # open connections per client address
        self._counted: set[ClientSide] = set()  # connections counted in per_ip
        # Connections still reading their upgrade, oldest first, and their count per address.
        self.pending: dict[ClientSide, None] = {}
        self.pending_per_ip: dict[str, int] = {}
        fds = raise_fd_limit()
        # Two descriptors per proxied connection; the admin listener has its own bound.
        spare = fds - FD_RESERVE - config.admin_max_connections
        self.max_connections = config.max_connections or max(spare // 2, 1)
        self.auth = (
            TokenVerifier(config.jwt_secret, leeway_s=config.jwt_leeway_s)
            if config.jwt_secret
            else None
        )
        self.draining = False
        self.drained = asyncio.Event()  # the current drain is over: empty, late, or undone
        self._drain_timers: list[asyncio.TimerHandle] = []
        # The process should drain and exit (SIGTERM, or POST /v1/drain); after a
        # signal ("final") there is no way back.
        self.exit_requested = asyncio.Event()
        self.exit_final = False
        self.drain_hint = CloseHint(window_ms=int(config.drain_window_s * 1000)).encode()
        # Set by the control plane: returns a Retry-After (seconds) while shedding, else None.
        self.admission: Callable[[], int | None] = lambda: None
        # Set by the control plane: a node's credential, to sign the routes sent to it.
        self.credential_of: Callable[[str], str] | None = None
        self._route_version = -1
        self._route_check_at = 0.0
        self.backend_ssl = backend_ssl_context(config)
        self.tls: ssl.SSLContext | None = None
        if config.tls_cert and config.tls_key:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(config.tls_cert, config.tls_key)
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        host, port = parse_hostport(self.config.listen, "listen")
        # TLS (self.tls) is started by each connection once it is counted (relay.py).
        self.server = await self.loop.create_server(
            lambda: ClientSide(self),
            host,
            port,
            backlog=4096,
            reuse_address=True,
            # Several workers share the port; the kernel spreads connections over them.
            reuse_port=self.config.workers > 1,
        )
        self._sweeper = self.loop.create_task(self._sweep())
        log.info(
            "gateway_listening", address=f"{host}:{self.port}", max_connections=self.max_connections
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    # ------------------------------------------------------------------ ConnectionHost

    def accepted(self, conn: ClientSide) -> HandshakeError | None:
        """Limits on a new connection: in all (503), per address (429), and on unfinished
        upgrades, per address (429) and in all (the oldest unfinished one is dropped)."""
        self.conns.add(conn)
        if len(self.conns) > self.max_connections:
            return HandshakeError(503, "gateway at connection limit", (("Retry-After", "5"),))
        cfg = self.config
        ip = conn.peer_ip
        n = self.per_ip.get(ip, 0)
        if cfg.max_conns_per_ip and n >= cfg.max_conns_per_ip:
            return HandshakeError(
                429, "too many connections from this address", (("Retry-After", "1"),)
            )
        waiting = self.pending_per_ip.get(ip, 0)
        if cfg.max_pending_per_ip and waiting >= cfg.max_pending_per_ip:
            return HandshakeError(
                429, "too many unfinished upgrades from this address", (("Retry-After", "1"),)
            )
        if cfg.max_conns_per_ip:
            self.per_ip[ip] = n + 1
            self._counted.add(conn)
        if cfg.max_pending_handshakes and len(self.pending) >= cfg.max_pending_handshakes:
            # Full of unfinished upgrades: the one waiting longest goes. A client that
            # sends its upgrade at once gets through; one holding a slot open does not.
            oldest = next(iter(self.pending))
            self._settled(oldest)
            self.metrics.evicted.inc()
            oldest.handshake_timeout()
        self.pending[conn] = None
        self.pending_per_ip[ip] = waiting + 1
        return None

    def _settled(self, conn: ClientSide) -> None:
        """``conn`` no longer waits for its upgrade (parsed, dropped or gone)."""
        if conn in self.pending:
            del self.pending[conn]
            left = self.pending_per_ip.get(conn.peer_ip, 1) - 1
            if left > 0:
                self.pending_per_ip[conn.peer_ip] = left
            else:
                self.pending_per_ip.pop(conn.peer_ip, None)

    def upgrade(self, conn: ClientSide, up: Upgrade) -> None:
        self._settled(conn)
        self.admit(up)
        self.loop.create_task(self.connect_backend(conn, up))

    def closed(self, conn: ClientSide, was_relaying: bool) -> None:
        self.conns.discard(conn)
        self.metrics.traffic.closed(conn)  # its counts stay counted as it leaves the live set
        self._settled(conn)
        if conn in self._counted:
            self._counted.discard(conn)
            left = self.per_ip.get(conn.peer_ip, 1) - 1
            if left > 0:
                self.per_ip[conn.peer_ip] = left
            else:
                self.per_ip.pop(conn.peer_ip, None)
        if was_relaying:
            self._log_close(conn)
        if self.draining and not self.conns:
            self.drained.set()

    # ------------------------------------------------------------------ admission

    def admit(self, up: Upgrade) -> None:
        """Checks done once the upgrade is parsed; HandshakeError refuses it."""
        cfg = self.config
        if self.draining:
            raise HandshakeError(503, "gateway draining", (("Retry-After", "1"),))
        if cfg.allowed_origins and up.origin is not None and up.origin not in cfg.allowed_origins:
            raise HandshakeError(403, "origin not allowed")
        if self.auth is not None:
            self.auth.verify(up.token, up.key)
        retry = self.admission()
        if retry is not None:
            raise HandshakeError(503, "no capacity, retry later", (("Retry-After", str(retry)),))

    async def connect_backend(self, client: ClientSide, up: Upgrade) -> None:
        try:
            await self._connect_backend(client, up)
        except HandshakeError as exc:
            client.reject(exc)
        except Exception:  # a bug must not leave a client hanging
            log.exception("connect_backend_failed", key=up.key)
            client.reject(HandshakeError(502, "gateway error"))

    async def _connect_backend(self, client: ClientSide, up: Upgrade) -> None:
        cfg = self.config
        tried: set[str] = set()
        request_id = secrets.token_hex(8)
        attempt = 0
        node: str | None = None
        while True:
            route = self.directory.route(up.key)
            if route is None:
                raise HandshakeError(503, "no backend available", (("Retry-After", "1"),))
            node = (
                route.node
                if node is None or route.node not in tried
                else self.directory.fallback(up.key, tried)
            )
            if node is None:
                raise HandshakeError(502, "backend unreachable")
            addr = self.directory.address(node)
            if addr is None:
                raise HandshakeError(503, "backend unknown", (("Retry-After", "1"),))
            proof = None
            if self.credential_of is not None:
                claim = RouteClaim(
                    up.key, route.slot, route.epoch, node, int(time.time() * 1000), request_id
                )
                proof = sign_claim(self.credential_of(node), claim)
            conn, request = forward_request(
                up,
                key=up.key,
                slot=route.slot,
                epoch=route.epoch,
                client_ip=client.peer_ip,
                request_id=request_id,
                proof=proof,
            )
            dialed = time.monotonic()
            try:
                _, proto = await asyncio.wait_for(
                    self._dial(partial(BackendSide, client, node, conn), addr),
                    cfg.connect_timeout_s,
                )
                self.metrics.backend_connect_seconds.observe(time.monotonic() - dialed)
            except (OSError, TimeoutError):
                self.metrics.backend_unreachable.inc()
                tried.add(node)
                if self.directory.fallback(up.key, tried) is None:
                    # With a control plane the owner's lease will run out and its keys
                    # move: tell the client when to come back instead of a bare 502.
                    retry = self.directory.retry_after(node)
                    if retry is not None:
                        raise HandshakeError(
                            503, "owner unreachable, retry", (("Retry-After", str(retry)),)
                        ) from None
                    raise HandshakeError(502, "backend unreachable") from None
                continue
            if client.state != CONNECTING:
                proto.transport.abort()
                return
            proto.transport.write(request)
            try:
                status, headers, trailing = await asyncio.wait_for(
                    proto.answer, cfg.handshake_timeout_s
                )
            except TimeoutError:
                proto.transport.abort()
                raise HandshakeError(504, "backend did not answer the upgrade") from None
            if status == 101:
                client.start_relay(proto, headers, trailing)
                return
            proto.transport.close()
            if status == 421 and attempt < cfg.reroute_retries:
                # The owner changed under us (a move in progress): re-route on a fresh table.
                self.metrics.reroutes.inc()
                await asyncio.sleep(0.05 * 2**attempt)
                attempt += 1
                node = None
                continue
            if status == 421:
                raise HandshakeError(503, "key is moving, retry", (("Retry-After", "1"),))
            if 400 <= status < 500 and status != 408:
                raise HandshakeError(status, "refused by backend")
            raise HandshakeError(502, "backend error")

    def _dial(
        self, factory: Callable[[], BackendSide], addr: tuple[str, int]
    ) -> Awaitable[tuple[asyncio.BaseTransport, BackendSide]]:
        """Open the backend hop, over TLS with ``backend_tls`` (a certificate that does not
        verify fails like a refused connection)."""
        if self.backend_ssl is None:
            return self.loop.create_connection(factory, *addr)
        return self.loop.create_connection(
            factory,
            *addr,
            ssl=self.backend_ssl,
            server_hostname=self.config.backend_tls_server_name or addr[0],
            ssl_handshake_timeout=self.config.connect_timeout_s,
        )

    # ------------------------------------------------------------------ lifecycle

    def _log_close(self, c: ClientSide) -> None:
        m = self.metrics
        m.closed.labels(c.closed_by).inc()
        log.info(
            "conn_closed",
            key=c.key,
            node=c.node,
            peer=c.peer_ip,
            duration_s=round(time.monotonic() - c.started, 3),
            c2b_bytes=c.c2b.bytes,
            c2b_frames=c.c2b.frames,
            b2c_bytes=c.b2c.bytes,
            b2c_frames=c.b2c.frames,
            close_code=c.close_code or c.c2b.close_code or c.b2c.close_code,
            closed_by=c.closed_by,
        )

    async def _sweep(self) -> None:
        """Once a second, each connection's own housekeeping (slow consumer, idle), and
        the route check after the table changed."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for c in list(self.conns):
                c.tick(now)
            self.refresh_metrics()
            self.check_routes(now)

    def refresh_metrics(self) -> None:
        """Bring the gauges and the traffic counters up to date (the sweep, each scrape)."""
        m = self.metrics
        m.connections.set(len(self.conns))
        m.relaying.set(sum(1 for c in self.conns if c.state == RELAY))
        m.traffic.publish(self.conns)

    def check_routes(self, now: float) -> int:
        """Cut relays to a node that no longer owns their key (it died, or it is a zombie
        that kept its sockets), ``ROUTE_GRACE_S`` after the table changed: by then a
        live source has closed its moved sessions itself, with 4000 and a window."""
        version = self.directory.version()
        if version != self._route_version:
            self._route_version = version
            self._route_check_at = now + ROUTE_GRACE_S
            return 0
        if not self._route_check_at or now < self._route_check_at:
            return 0
        self._route_check_at = 0.0
        cut = 0
        for c in list(self.conns):
            if c.state != RELAY:
                continue
            route = self.directory.route(c.key)
            if route is None or route.node != c.node:
                c.drain_close(CloseCode.NOT_OWNER, "")
                cut += 1
        if cut:
            self.metrics.routes_cut.inc(cut)
            log.warning("relays_cut", count=cut, reason="owner changed")
        return cut

    def begin_drain(self) -> None:
        """Refuse new upgrades and close clients with 1001, spread over the drain window;
        at the deadline, cut whoever is left. Idempotent."""
        if self.draining:
            return
        self.draining = True
        self.drained = asyncio.Event()
        cfg = self.config
        relaying = [c for c in self.conns if c.state == RELAY]
        log.info("gateway_draining", connections=len(relaying), window_s=cfg.drain_window_s)
        for c in list(self.conns):
            if c.state < RELAY:
                c.drain_close()
        n = max(len(relaying), 1)
        self._drain_timers = [
            self.loop.call_later(
                cfg.drain_window_s * i / n, c.drain_close, CloseCode.GOING_AWAY, self.drain_hint
            )
            for i, c in enumerate(relaying)
        ]
        self._drain_timers.append(self.loop.call_later(cfg.drain_deadline_s, self._drain_late))
        if not self.conns:
            self.drained.set()

    def _drain_late(self) -> None:
        for c in list(self.conns):
            c.abort()
        self.drained.set()

    async def drain(self) -> bool:
        """Drain (see :meth:`begin_drain`) and wait: True once no client is left (or the
        deadline passed), False if :meth:`undrain` reopened the gateway first."""
        self.begin_drain()
        await self.drained.wait()
        return self.draining

    def undrain(self) -> bool:
        """Reopen a draining gateway: new upgrades are admitted again and the closes not
        yet sent are called off. False when the drain cannot be undone: it was started by
        a signal, or it was for exiting and is over."""
        if not self.draining:
            return True
        if self.exit_final or (self.exit_requested.is_set() and self.drained.is_set()):
            return False
        for t in self._drain_timers:
            t.cancel()
        self._drain_timers = []
        for c in self.conns:
            c.drain_pending = False
        self.draining = False
        self.exit_requested.clear()
        self.drained.set()
        log.info("gateway_undrained", connections=len(self.conns))
        return True

    def request_exit(self, *, final: bool) -> None:
        """Ask the process to drain and exit (``final``: a signal, no undrain)."""
        self.exit_final = self.exit_final or final
        self.begin_drain()
        self.exit_requested.set()

    async def close(self) -> None:
        for t in self._drain_timers:
            t.cancel()
        if self.server is not None:
            self.server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.conns):
            c.abort()
