"""Bad session-protocol input against a real backend server (in this process):
each is answered with the right close code, and nothing is lost for anyone else."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.apps.counter import CounterApp
from backend.config import BackendConfig
from backend.load import LoadMeter
from backend.node import Node
from backend.server import BackendServer
from backend.store import SQLiteStore
from clientlib.kernel.routing import static_table

pytestmark = pytest.mark.timeout(20)


@contextlib.asynccontextmanager
async def server(tmp_path, node_id: str = "n1"):
    store = SQLiteStore(tmp_path / "s.db")
    node = Node(CounterApp(), store, LoadMeter(1e6), BackendConfig(node_id=node_id))
    srv = BackendServer(node, max_message=64 * 1024)
    await srv.start("127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{srv.port}/ws", node
    finally:
        assert srv.server is not None
        srv.server.close()
        await srv.server.wait_closed()
        store.close()


async def close_code_after(url: str, *frames: Any) -> int | None:
    async with connect(url, compression=None) as ws:
        for f in frames:
            await ws.send(f if isinstance(f, str | bytes) else orjson.dumps(f).decode())
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


HELLO = {"t": "hello", "sid": None, "last": 0}


@pytest.mark.parametrize(
    "frames,code",
    [
        (["not json"], 4502),
        ([{"t": "msg", "seq": 1, "ack": 0, "d": 1}], 4502),  # no hello first
        ([{"t": "bogus"}], 4502),
        ([HELLO, {"t": "launch"}], 4502),
        ([HELLO, {"t": "msg", "seq": -1, "ack": 0, "d": 1}], 4502),
        ([HELLO, {"t": "msg", "seq": 2**60, "ack": 0, "d": 1}], 4502),  # out of range
        ([HELLO, {"t": "msg", "seq": 3, "ack": 0, "d": 1}], 4502),  # skips ahead
        ([HELLO, {"t": "ack", "ack": 5}], 4502),  # ack for messages never sent
        ([HELLO, {"t": "hello", "sid": None, "last": 0}], 4502),  # hello twice
        ([HELLO, "x" * 70000], 1009),  # over max_message
    ],
)
async def test_bad_session_input(tmp_path, frames, code):
    async with server(tmp_path) as (url, _node):
        assert await close_code_after(f"{url}?key=k", *frames) == code
        # a well-behaved client on the same key is unaffected
        async with connect(f"{url}?key=k") as ws:
            await ws.send(orjson.dumps(HELLO).decode())
            assert orjson.loads(await ws.recv())["t"] == "welcome"
            await ws.send('{"t":"msg","seq":1,"ack":0,"d":{"n":1}}')
            assert orjson.loads(await ws.recv())["d"]["n"] == 1


async def test_session_id_of_another_key_is_not_resumed(tmp_path):
    async with server(tmp_path) as (url, _):
        async with connect(f"{url}?key=alice") as ws:
            await ws.send(orjson.dumps(HELLO).decode())
            sid = orjson.loads(await ws.recv())["sid"]
        async with connect(f"{url}?key=mallory") as ws:
            await ws.send(orjson.dumps({"t": "hello", "sid": sid, "last": 0}).decode())
            welcome = orjson.loads(await ws.recv())
            assert welcome["resumed"] is False and welcome["sid"] != sid


async def test_missing_key_and_wrong_owner(tmp_path):
    async with server(tmp_path) as (url, node):
        with pytest.raises(InvalidStatus) as exc:
            await connect(url)
        assert exc.value.response.status_code == 400
        node.view = static_table(["n1", "n2"])
        theirs = next(k for k in (f"k{i}" for i in range(200)) if node.view.route(k).node == "n2")  # type: ignore[union-attr]
        route = node.view.route(theirs)
        assert route is not None
        with pytest.raises(InvalidStatus) as exc:
            await connect(
                f"{url}?key={theirs}",
                additional_headers={
                    "X-Route-Key": theirs,
                    "X-Route-Slot": str(route.slot),
                    "X-Route-Epoch": "0",
                },
            )
        assert exc.value.response.status_code == 421


async def test_hello_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr("backend.server.HELLO_TIMEOUT_S", 0.2)
    async with server(tmp_path) as (url, _):
        assert await close_code_after(f"{url}?key=k") == 4502
