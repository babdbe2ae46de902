"""The backend's control session: an asyncio shell around :class:`ControlAgent`.

One WebSocket to the control plane (``/v1/control`` on a gateway's admin port),
authenticated with this node's own credential. Reconnects with jittered backoff;
every message is decoded at the door with the kernel's control codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from backend.control_agent import ControlAgent
from clientlib.kernel import control_protocol as cp
from clientlib.kernel.backoff import BackoffPolicy, reconnect_delay
from clientlib.kernel.session_protocol import Action, CloseHint, ProtocolError

__all__ = ["ControlClient", "LoopProbe"]

log = structlog.get_logger("backend.control_client")

TICK_S = 0.1
REFUSED_RETRY_S = 1.0


class ControlClient:
    def __init__(
        self,
        agent: ControlAgent,
        url: str,
        credential: str,
        *,
        tls: ssl.SSLContext | None = None,
    ):
        self.agent = agent
        self.url = url
        self.credential = credential
        self.tls = tls
        self.ws: ClientConnection | None = None
        self.registered = asyncio.Event()
        self._left = asyncio.Event()

    async def run(self) -> None:
        attempt = 0
        policy = BackoffPolicy(base=0.1, cap=2.0)
        node_id = self.agent.node.node_id
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers={
                        "Authorization": f"Bearer {self.credential}",
                        "X-Node-Id": node_id,
                    },
                    open_timeout=5,
                    max_size=16 << 20,
                    ping_interval=5,
                    ping_timeout=5,
                    ssl=self.tls if self.url.startswith("wss:") else None,
                ) as ws:
                    self.ws = ws
                    attempt = 0
                    await self._session(ws)
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    log.error(
                        "control_refused",
                        status=exc.response.status_code,
                        hint="check this node's credential (python -m gateway credential NODE_ID)",
                    )
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                pass
            finally:
                self.ws = None
                self.registered.clear()
            if self.agent.leaving:
                self._left.set()
                return
            delay = reconnect_delay(policy, attempt, Action.RECONNECT, CloseHint(), random.random())
            attempt += 1
            if self.agent.refused is not None:
                delay = REFUSED_RETRY_S  # another process holds our id: wait for its lease
            await asyncio.sleep(delay or 0.1)

    async def _session(self, ws: ClientConnection) -> None:
        agent = self.agent
        for m in agent.connected(time.monotonic()):
            await ws.send(cp.encode(m))
        ticker = asyncio.get_running_loop().create_task(self._tick(ws))
        try:
            async for raw in ws:
                try:
                    msg = cp.decode(raw)
                except ProtocolError as exc:
                    # Refused at the door: a bad order changes nothing here.
                    log.error("control_message_refused", error=str(exc))
                    continue
                for answer in agent.received(time.monotonic(), msg):
                    await ws.send(cp.encode(answer))
                if agent.registered:
                    self.registered.set()
                if agent.left:
                    self._left.set()
                if agent.refused is not None:
                    return  # the plane closes the session; try again after a backoff
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    async def _tick(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                for m in self.agent.tick(time.monotonic()):
                    await ws.send(cp.encode(m))
                await asyncio.sleep(TICK_S)

    async def leave(self, timeout: float = 5.0) -> bool:
        """Ask the control plane to reassign everything here; True once it confirmed."""
        msgs = self.agent.leave()
        ws = self.ws
        if ws is None:
            return False
        with contextlib.suppress(ConnectionClosed):
            for m in msgs:
                await ws.send(cp.encode(m))
        try:
            await asyncio.wait_for(self._left.wait(), timeout)
            return True
        except TimeoutError:
            return False


class LoopProbe:
    """Event-loop lag (how late a 100 ms timer fires) and busy fraction (CPU time / wall)."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.lag_ms = 0.0
        self._cpu = time.process_time()
        self._wall = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.interval)
            late = (time.monotonic() - t0 - self.interval) * 1000
            self.lag_ms += 0.2 * (max(late, 0.0) - self.lag_ms)

    def read(self) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.monotonic()
        busy = (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._cpu, self._wall = cpu, wall
        return self.lag_ms, min(busy, 1.0)
