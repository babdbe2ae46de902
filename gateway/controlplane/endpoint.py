"""The backends' control sessions: authentication, decoding at the door, sending.

Each backend holds one WebSocket to ``/v1/control`` on the admin port. This
module owns those sockets and nothing else: it checks the bearer secret,
decodes every message with the kernel's control codec (a malformed one is
answered with ``error``, logged with its reason, and changes nothing), and
hands the typed messages to a :class:`ControlHandler`. Sending to a backend
never blocks the control plane for long: a peer that does not take a message
in time is disconnected and re-registers when it recovers.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Protocol

import structlog
from aiohttp import WSMsgType, web

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.session_protocol import ProtocolError

__all__ = ["ControlEndpoint", "ControlHandler"]

log = structlog.get_logger("gateway.control")


class ControlHandler(Protocol):
    """What the control plane does with the messages of its backends."""

    def registered(self, msg: cp.Register) -> None:
        """A node (re-)registered; its session is current from now on."""

    async def received(self, node: str, msg: cp.Report | cp.Released | cp.Leave) -> None:
        """A message from a registered node's current session."""

    def table_message(self) -> cp.TableUpdate:
        """The table, sent to a node right after it registers."""


class ControlEndpoint:
    def __init__(self, secret: str, handler: ControlHandler, *, send_timeout_s: float = 2.0):
        self.secret = secret
        self.handler = handler
        self.send_timeout_s = send_timeout_s
        self.sessions: dict[str, web.WebSocketResponse] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of ``GET /v1/control``."""
        got = request.headers.get("Authorization", "")
        if not (
            got.startswith("Bearer ")
            and hmac.compare_digest(got[7:].encode(), self.secret.encode())
        ):
            log.warning("control_auth_failed", peer=request.remote)
            return web.json_response({"error": "bad control secret"}, status=401)
        ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=4 << 20)
        await ws.prepare(request)
        node: str | None = None
        try:
            async for frame in ws:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    msg = cp.decode(frame.data)
                    node = await self._dispatch(ws, node, msg)
                except ProtocolError as exc:
                    log.warning("control_message_refused", node=node, error=str(exc))
                    await ws.send_bytes(cp.encode(cp.ControlError(str(exc))))
        finally:
            if node is not None and self.sessions.get(node) is ws:
                del self.sessions[node]
        return ws

    async def _dispatch(
        self, ws: web.WebSocketResponse, node: str | None, msg: cp.ControlMessage
    ) -> str | None:
        if isinstance(msg, cp.Register):
            old = self.sessions.get(msg.node)
            if old is not None and old is not ws:
                await old.close()
            self.handler.registered(msg)
            self.sessions[msg.node] = ws
            await ws.send_bytes(cp.encode(self.handler.table_message()))
            return msg.node
        if node is None:
            raise ProtocolError("register first")
        if isinstance(msg, cp.Report | cp.Released | cp.Leave):
            if self.sessions.get(node) is not ws:
                raise ProtocolError("this session was replaced by a newer one")
            await self.handler.received(node, msg)
            return node
        raise ProtocolError(f"{type(msg).__name__} is not sent by backends")

    # ------------------------------------------------------------------ sending

    async def send(self, node: str, msg: cp.ControlMessage) -> bool:
        ws = self.sessions.get(node)
        if ws is None or ws.closed:
            return False
        return await self._send_raw(ws, cp.encode(msg))

    async def broadcast(self, msg: cp.ControlMessage) -> None:
        data = cp.encode(msg)
        await asyncio.gather(*(self._send_raw(ws, data) for ws in list(self.sessions.values())))

    async def _send_raw(self, ws: web.WebSocketResponse, data: bytes) -> bool:
        """Send to one backend; one that does not take it in time is disconnected, so a
        stuck peer never holds up the control plane (it re-registers when it recovers)."""
        try:
            await asyncio.wait_for(ws.send_bytes(data), self.send_timeout_s)
            return True
        except TimeoutError:
            log.warning("control_peer_stuck", timeout_s=self.send_timeout_s)
            asyncio.get_running_loop().create_task(ws.close())
            return False
        except (ConnectionError, RuntimeError):
            return False

    async def close(self) -> None:
        for ws in list(self.sessions.values()):
            await ws.close()
