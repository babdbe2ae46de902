"""The backend's side of the control plane: register, lease, load reports, release orders."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import assert_never

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from backend.node import Node
from clientlib.kernel import control_protocol as cp
from clientlib.kernel.backoff import BackoffPolicy, reconnect_delay
from clientlib.kernel.session_protocol import Action, CloseHint, ProtocolError
from clientlib.kernel.settings import parse_hostport

__all__ = ["ControlClient", "LoopProbe"]

log = structlog.get_logger("backend.control_client")


class ControlClient:
    def __init__(
        self,
        node: Node,
        url: str,
        secret: str,
        *,
        advertise: str,
        report_interval: float = 1.0,
        loop_probe: LoopProbe | None = None,
    ):
        self.node = node
        self.url = url
        self.secret = secret
        self.advertise = parse_hostport(advertise, "advertise")
        self.report_interval = report_interval
        self.probe = loop_probe or LoopProbe()
        self.ws: ClientConnection | None = None
        self.registered = asyncio.Event()
        self._left = asyncio.Event()
        self.leaving = False

    async def run(self) -> None:
        attempt = 0
        policy = BackoffPolicy(base=0.1, cap=2.0)
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.secret}"},
                    open_timeout=5,
                    max_size=16 << 20,
                    ping_interval=5,
                    ping_timeout=5,
                ) as ws:
                    self.ws = ws
                    attempt = 0
                    await self._session(ws)
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    log.error(
                        "control_refused",
                        status=exc.response.status_code,
                        hint="check control_secret",
                    )
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                pass
            finally:
                self.ws = None
                self.registered.clear()
            if self.leaving:
                self._left.set()
                return
            delay = reconnect_delay(policy, attempt, Action.RECONNECT, CloseHint(), random.random())
            attempt += 1
            await asyncio.sleep(delay or 0.1)

    async def _session(self, ws: ClientConnection) -> None:
        node = self.node
        await ws.send(
            cp.encode(
                cp.Register(
                    node.config.node_id,
                    self.advertise,
                    node.meter.capacity,
                    node.owned_units(),
                )
            )
        )
        reporter = asyncio.get_running_loop().create_task(self._report(ws))
        try:
            async for raw in ws:
                try:
                    msg = cp.decode(raw)
                except ProtocolError as exc:
                    # Refused at the door: a bad order changes nothing here.
                    log.error("control_message_refused", error=str(exc))
                    continue
                self._handle(ws, msg)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    def _handle(self, ws: ClientConnection, msg: cp.ControlMessage) -> None:
        node = self.node
        match msg:
            case cp.TableUpdate(table):
                node.view = table
                self.registered.set()
            case cp.Release(move, units, epoch):
                flushed = node.release(list(units), epoch)
                log.info("release", move=move, units=len(units), first=units[:4], flushed=flushed)
                self._send(ws, cp.Released(move, flushed))
            case cp.Commit(move, units):
                closed = node.commit_release(list(units))
                log.info("release_committed", move=move, sessions_closed=closed)
            case cp.Abort(move, units):
                node.abort_release(list(units))
                log.info("release_aborted", move=move)
            case cp.Left():
                self._left.set()
            case cp.ControlError(error):
                log.error("control_error", error=error)
            case cp.Register() | cp.Report() | cp.Released() | cp.Leave():
                log.error("control_message_refused", error=f"{type(msg).__name__} is for the plane")
            case _:
                assert_never(msg)

    def _send(self, ws: ClientConnection, msg: cp.ControlMessage) -> None:
        asyncio.get_running_loop().create_task(self._send_quiet(ws, cp.encode(msg)))

    @staticmethod
    async def _send_quiet(ws: ClientConnection, data: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(data)

    async def _report(self, ws: ClientConnection) -> None:
        while True:
            lag, busy = self.probe.read()
            rep = self.node.meter.report(
                time.monotonic(), sessions=self.node.session_count, loop_lag_ms=lag, busy=busy
            )
            await ws.send(cp.encode(cp.Report(rep)))
            await asyncio.sleep(self.report_interval)

    async def leave(self, timeout: float = 5.0) -> bool:
        """Ask the control plane to reassign everything here; True once it confirmed."""
        self.leaving = True
        ws = self.ws
        if ws is None:
            return False
        with contextlib.suppress(ConnectionClosed):
            await ws.send(cp.encode(cp.Leave(self.node.config.node_id)))
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
