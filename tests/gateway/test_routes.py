"""Routing through the gateway: keys in any script reach their owner, and relays to a
node that no longer owns their key are cut once the table has moved on."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from clientlib.kernel.credentials import unquote_key
from clientlib.kernel.routing import Route, slot_of
from clientlib.kernel.session_protocol import CloseCode
from gateway.config import GatewayConfig
from gateway.route_source import StaticDirectory
from gateway.server import ROUTE_GRACE_S, Gateway

pytestmark = pytest.mark.timeout(30)


class MovableDirectory(StaticDirectory):
    """Every key on ``owner``; moving it changes the version, as the control plane does."""

    def __init__(self, backends: list[str]):
        super().__init__(backends)
        self.owner = backends[0]
        self._version = 1

    def route(self, key: str) -> Route | None:
        return Route(self.owner, slot_of(key), self._version)

    def move(self, node: str) -> None:
        self.owner = node
        self._version += 1

    def version(self) -> int:
        return self._version


@contextlib.asynccontextmanager
async def backend(seen: list[str]):
    async def handler(ws: ServerConnection) -> None:
        seen.append(unquote_key(ws.request.headers["X-Route-Key"]))  # type: ignore[union-attr]
        with contextlib.suppress(ConnectionClosed):
            async for m in ws:
                await ws.send(m)

    async with serve(handler, "127.0.0.1", 0) as srv:
        yield f"127.0.0.1:{next(iter(srv.sockets)).getsockname()[1]}"


@contextlib.asynccontextmanager
async def gateway(directory: Any):
    gw = Gateway(GatewayConfig(listen="127.0.0.1:0"), directory)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


async def test_keys_outside_ascii_reach_their_owner_unchanged():
    seen: list[str] = []
    async with backend(seen) as b, gateway(StaticDirectory([b])) as gw:
        for query, key in [
            ("caf%C3%A9", "café"),
            ("%E2%82%AC", "€"),
            ("room+42", "room 42"),
            ("%E6%96%87%E6%9B%B8%3A1", "文書:1"),
        ]:
            async with connect(f"ws://127.0.0.1:{gw.port}/ws?key={query}") as ws:
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), 5) == "x"
            assert seen[-1] == key
        # A raw UTF-8 target (not percent-encoded by the client) is accepted too.
        async with connect(f"ws://127.0.0.1:{gw.port}/ws?key=€uro") as ws:
            await ws.send("y")
            assert await asyncio.wait_for(ws.recv(), 5) == "y"
        assert seen[-1] == "€uro"


async def test_a_relay_to_a_node_that_lost_its_key_is_cut_after_the_grace():
    seen: list[str] = []
    async with backend(seen) as a, backend(seen) as b:
        directory = MovableDirectory([a, b])
        async with gateway(directory) as gw:
            gw._sweeper.cancel()  # this test is the clock: no check at the sweep's own times
            ws = await connect(f"ws://127.0.0.1:{gw.port}/ws?key=doc:7")
            await ws.send("1")
            assert await asyncio.wait_for(ws.recv(), 5) == "1"
            now = 1000.0
            assert gw.check_routes(now) == 0  # the version is noted, nothing changed
            assert gw.check_routes(now + 10) == 0  # still its owner
            directory.move(b)
            assert gw.check_routes(now + 20) == 0  # the change starts the grace
            assert gw.check_routes(now + 20 + ROUTE_GRACE_S / 2) == 0  # the source's turn
            await ws.send("2")
            assert await asyncio.wait_for(ws.recv(), 5) == "2"
            assert gw.check_routes(now + 20 + ROUTE_GRACE_S) == 1  # then the gateway's
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.NOT_OWNER
            # A new connection lands on the new owner.
            async with connect(f"ws://127.0.0.1:{gw.port}/ws?key=doc:7") as ws2:
                await ws2.send("3")
                assert await asyncio.wait_for(ws2.recv(), 5) == "3"
            assert gw.check_routes(now + 100) == 0
