"""The admin HTTP API (aiohttp), on its own port, and the backends' control endpoint.

Every call but ``/healthz`` and ``/readyz`` (open, for load balancers) needs the
admin token (``Authorization: Bearer``); ``/v1/control`` checks the control
secret itself. There is always a token: the configured ``admin_token``, or one
generated at start and written to ``state_dir/admin.token`` (mode 0600).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clientlib.kernel.settings import ConfigError
from gateway.admin_listener import AdminGuard, GuardedConnection
from gateway.config import GatewayConfig
from gateway.dashboard import COOKIE, Dashboard
from gateway.relay import RELAY

__all__ = [
    "TOKEN_FILE",
    "AdminAPI",
    "Handler",
    "admin_token",
    "bearer_ok",
]

if TYPE_CHECKING:
    from gateway.controlplane.controller import Controller
    from gateway.server import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_FILE = "admin.token"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v1/control"})  # control: its own secret


def admin_token(cfg: GatewayConfig) -> tuple[str, Path | None]:
    """The admin token, and the file it was written to when none was configured: a new
    random one each start, in ``state_dir/admin.token``, readable by this user only."""
    if cfg.admin_token:
        return cfg.admin_token, None
    token = secrets.token_urlsafe(32)
    path = Path(cfg.state_dir) / TOKEN_FILE
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(
            f"config: cannot write the admin token to {path} ({exc.strerror}): "
            "set admin_token or a writable state_dir"
        ) from None
    return token, path


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def bearer_ok(request: web.Request, secret: str | None) -> bool:
    if secret is None:
        return True
    got = request.headers.get("Authorization", "")
    # The scheme is case-insensitive (RFC 7235 §2.1), as on the data plane.
    return got[:7].lower() == "bearer " and hmac.compare_digest(
        got[7:].strip().encode(), secret.encode()
    )


class AdminAPI:
    def __init__(
        self,
        gw: Gateway,
        controller: Controller | None,
        token: str,
        *,
        ready: Callable[[], bool] | None = None,
    ):
        """``ready``: whether the routes can serve, when no controller here says so (a
        worker that routes from worker 0's state file)."""
        self.gw = gw
        self.controller = controller
        self.token = token
        self.routes_ready = ready or (controller.ready if controller else (lambda: True))
        self.app = web.Application(middlewares=[self._guarded, self._auth], client_max_size=1 << 16)
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/nodes", self.nodes)
        r.add_get("/v1/table", self.table)
        r.add_get("/v1/connections", self.connections)
        r.add_get("/v1/status", self.status)
        r.add_post("/v1/drain", self.drain)
        r.add_post("/v1/undrain", self.undrain)
        Dashboard(gw, controller).install(r)
        if controller is not None:
            r.add_get("/v1/control", self.control)
            r.add_get("/v1/moves", self.moves)
            r.add_post("/v1/rebalancer/{action:pause|resume}", self.rebalancer)
            r.add_post("/v1/move", self.move)
            r.add_post("/v1/nodes/{node}/drain", self.node_drain)
        self.runner: web.AppRunner | None = None
        self.guard: AdminGuard | None = None
        self.server: asyncio.Server | None = None

    @web.middleware
    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The head is in: the connection is busy until the answer; its body has
        ``admin_timeout_s`` to arrive."""
        guard = self.guard
        if guard is None:
            return await handler(request)
        conn = guard.begin(request.transport)
        try:
            if request.body_exists:
                try:
                    async with asyncio.timeout(guard.timeout_s):
                        await request.read()
                except TimeoutError:
                    return _json({"error": "request body too slow"}, 408)
            return await handler(request)
        finally:
            guard.end(conn)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not self._authorized(request):
            return _json({"error": "admin token required"}, 401)
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        if bearer_ok(request, self.token):
            return True
        if request.path == "/dashboard" or request.path.startswith("/dashboard/"):
            # A browser cannot send the header on a page load or an EventSource: the token
            # comes once in the page's query, then in a cookie (see gateway/dashboard.py).
            got = request.cookies.get(COOKIE)
            if got is None and request.path == "/dashboard":
                got = request.query.get("token")
            return got is not None and hmac.compare_digest(got.encode(), self.token.encode())
        return False

    async def start(self, host: str, port: int) -> int:
        """Listen (TLS with ``admin_tls_cert``), each connection under the guard."""
        cfg = self.gw.config
        timeout = cfg.admin_timeout_s
        self.runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=timeout)
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        dropped = self.gw.metrics.admin_dropped
        guard = self.guard = AdminGuard(
            loop,
            limit=cfg.admin_max_connections,
            timeout_s=timeout,
            dropped=lambda reason: dropped.labels(reason).inc(),
        )
        ctx = None
        if cfg.admin_tls_cert and cfg.admin_tls_key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cfg.admin_tls_cert, cfg.admin_tls_key)
        self.server = await loop.create_server(
            lambda: GuardedConnection(guard, server),
            host,
            port,
            ssl=ctx,
            ssl_handshake_timeout=timeout if ctx else None,
            reuse_address=True,
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.guard is not None:
            self.guard.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def control(self, request: web.Request) -> web.StreamResponse:
        """A backend's control socket: once its secret checks out, it no longer counts
        against ``admin_max_connections``."""
        assert self.controller is not None
        endpoint = self.controller.endpoint
        if self.guard is not None and endpoint.authenticate(request) is not None:
            self.guard.to_control(self.guard.begin(request.transport))
        return await endpoint.handle(request)

    # ------------------------------------------------------------------ reads

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        ready = not self.gw.draining and self.routes_ready()
        note = self.controller.stale_note() if self.controller is not None else ""
        return web.Response(
            text=("ready\n" if ready else "not ready\n") + note, status=200 if ready else 503
        )

    async def metrics(self, request: web.Request) -> web.Response:
        self.gw.refresh_metrics()
        return web.Response(
            body=generate_latest(self.gw.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def nodes(self, request: web.Request) -> web.Response:
        return _json(self.gw.directory.view())

    async def table(self, request: web.Request) -> web.Response:
        t = getattr(self.gw.directory, "table", None)
        if t is None:
            return _json({"error": "no table"}, 404)
        if request.query.get("full"):
            return _json(t.to_json())
        counts = Counter(n for n in t.owners)
        return _json(
            {
                "version": t.version,
                "slots": len(t.owners),
                "slots_by_node": dict(counts),
                "overrides": {k: list(v) for k, v in t.overrides.items()},
            }
        )

    async def connections(self, request: web.Request) -> web.Response:
        by_key: Counter[str] = Counter()
        by_node: Counter[str] = Counter()
        for c in self.gw.conns:
            if c.state == RELAY:
                by_key[c.key] += 1
                by_node[c.node] += 1
        limit = int(request.query.get("limit", "100"))
        return _json(
            {
                "total": sum(by_key.values()),
                "by_node": dict(by_node),
                "by_key": dict(by_key.most_common(limit)),
            }
        )

    async def status(self, request: web.Request) -> web.Response:
        """One document with what a dashboard or the loadtest polls twice a second."""
        out: dict[str, Any] = {
            "connections": len(self.gw.conns),
            "draining": self.gw.draining,
            "rejected": {
                s.labels["status"]: int(s.value)
                for m in self.gw.metrics.rejected.collect()
                for s in m.samples
                if s.name.endswith("_total")
            },
        }
        if self.controller is not None:
            out.update(self.controller.status())
        return _json(out)

    async def moves(self, request: web.Request) -> web.Response:
        assert self.controller is not None
        return _json({"moves": self.controller.history.to_json()})

    # ------------------------------------------------------------------ writes

    async def drain(self, request: web.Request) -> web.Response:
        """Drain; by default the process then exits (code 0), as on SIGTERM. With
        ``{"exit": false}`` it stays up, refusing upgrades, until ``POST /v1/undrain``."""
        try:
            body = await request.json(loads=orjson.loads) if request.body_exists else {}
            exit_ = body.get("exit", True)
        except (ValueError, AttributeError):
            exit_ = None
        if not isinstance(exit_, bool):
            return _json({"error": 'body must be empty or {"exit": true | false}'}, 400)
        stay = not exit_
        gw = self.gw
        if stay and gw.exit_requested.is_set():
            return _json({"error": "already draining to exit; POST /v1/undrain first"}, 409)
        if stay:
            gw.begin_drain()
        else:
            gw.request_exit(final=False)
        return _json(
            {"draining": True, "exit": not stay, "deadline_s": gw.config.drain_deadline_s}, 202
        )

    async def undrain(self, request: web.Request) -> web.Response:
        if not self.gw.undrain():
            return _json({"error": "the gateway is exiting"}, 409)
        return _json({"draining": False})

    async def rebalancer(self, request: web.Request) -> web.Response:
        assert self.controller is not None
        self.controller.paused = request.match_info["action"] == "pause"
        return _json({"paused": self.controller.paused})

    async def move(self, request: web.Request) -> web.Response:
        assert self.controller is not None
        try:
            body = await request.json(loads=orjson.loads)
            unit: tuple[str, int | str] = (
                ("key", str(body["key"])) if "key" in body else ("slot", int(body["slot"]))
            )
            to = str(body["to"])
        except (ValueError, KeyError, TypeError):
            return _json({"error": 'body must be {"key": K | "slot": N, "to": NODE}'}, 400)
        try:
            move_id = await self.controller.manual_move(unit, to, pin=bool(body.get("pin")))
        except ValueError as exc:
            return _json({"error": str(exc)}, 409)
        return _json({"move": move_id})

    async def node_drain(self, request: web.Request) -> web.Response:
        assert self.controller is not None
        try:
            n = await self.controller.drain_node(request.match_info["node"])
        except ValueError as exc:
            return _json({"error": str(exc)}, 404)
        return _json({"moves": n})
