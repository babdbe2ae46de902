"""The backends' control sessions: authentication, decoding at the door, sending.

Each backend holds one WebSocket to ``/v1/control`` on the admin port,
authenticated as one node: ``X-Node-Id`` names it and ``Authorization: Bearer``
carries that node's own credential (derived from the cluster secret, see
:mod:`clientlib.kernel.credentials`). A session may speak only for the node it
authenticated as. Every message is decoded with the kernel's control codec; a
malformed one is answered with ``error``, logged with its reason, and changes
nothing. Sending never blocks the control plane for long: a peer that does not
take a message in time is disconnected and re-registers when it recovers.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Protocol

import structlog
from aiohttp import WSMsgType, web

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.credentials import node_credential
from clientlib.kernel.session_protocol import ProtocolError

__all__ = ["ControlEndpoint", "ControlHandler"]

log = structlog.get_logger("gateway.control")


class ControlHandler(Protocol):
    """What the control plane does with its backends' messages."""

    async def registered(self, msg: cp.Register) -> str | None:
        """A node registers; None accepts it, a string is the reason it is refused."""

    async def received(self, node: str, msg: cp.Report | cp.Released | cp.Leave) -> None:
        """A message from a registered node's current session."""


class ControlEndpoint:
    def __init__(self, secret: str, handler: ControlHandler, *, send_timeout_s: float = 2.0):
        self.secret = secret
        self.handler = handler
        self.send_timeout_s = send_timeout_s
        self.sessions: dict[str, web.WebSocketResponse] = {}
        self._credentials: dict[str, str] = {}

    def credential(self, node: str) -> str:
        cred = self._credentials.get(node)
        if cred is None:
            cred = self._credentials[node] = node_credential(self.secret, node)
        return cred

    def authenticate(self, request: web.Request) -> str | None:
        """The node id the request proves it is, or None."""
        node = request.headers.get("X-Node-Id", "")
        got = request.headers.get("Authorization", "")
        if not node or len(node) > cp.MAX_NODE_ID_LEN or not node.isprintable():
            return None
        if not got.startswith("Bearer "):
            return None
        if not hmac.compare_digest(got[7:].encode(), self.credential(node).encode()):
            return None
        return node

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of ``GET /v1/control``."""
        node = self.authenticate(request)
        if node is None:
            log.warning("control_auth_failed", peer=request.remote)
            return web.json_response({"error": "bad node credential"}, status=401)
        ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=4 << 20)
        await ws.prepare(request)
        registered = False
        try:
            async for frame in ws:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                try:
                    msg = cp.decode(frame.data)
                    if await self._dispatch(ws, node, registered, msg):
                        registered = True
                except ProtocolError as exc:
                    log.warning("control_message_refused", node=node, error=str(exc))
                    await ws.send_bytes(cp.encode(cp.ControlError(str(exc))))
        finally:
            if self.sessions.get(node) is ws:
                del self.sessions[node]
        return ws

    async def _dispatch(
        self, ws: web.WebSocketResponse, node: str, registered: bool, msg: cp.ControlMessage
    ) -> bool:
        """Returns True once the session is registered."""
        if isinstance(msg, cp.Register):
            if msg.node != node:
                raise ProtocolError(f"this session is {node!r}; it cannot register {msg.node!r}")
            old = self.sessions.get(node)
            self.sessions[node] = ws  # effects of the registration reach this session
            refusal = await self.handler.registered(msg)
            if refusal is not None:
                if old is not None:
                    self.sessions[node] = old
                else:
                    del self.sessions[node]
                log.warning("registration_refused", node=node, reason=refusal)
                await ws.send_bytes(cp.encode(cp.Refused(refusal)))
                await ws.close()
                return False
            if old is not None and old is not ws:
                await old.close()
            return True
        if not registered:
            raise ProtocolError("register first")
        if isinstance(msg, cp.Report | cp.Released | cp.Leave):
            if self.sessions.get(node) is not ws:
                raise ProtocolError("this session was replaced by a newer one")
            await self.handler.received(node, msg)
            return True
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

    async def disconnect(self, node: str) -> None:
        ws = self.sessions.pop(node, None)
        if ws is not None:
            await ws.close()

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
