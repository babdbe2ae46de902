"""Bad session-protocol input against a real backend server (in this process):
each is answered with the right close code, and nothing is lost for anyone else."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from backend.apps.counter import CounterApp
from backend.config import BackendConfig
from backend.load import LoadMeter
from backend.node import Node
from backend.server import BackendServer
from backend.store import SQLiteStore
from clientlib.kernel.credentials import RouteClaim, node_credential, quote_key, sign_claim
from clientlib.kernel.routing import slot_of, static_table

pytestmark = pytest.mark.timeout(20)


@contextlib.asynccontextmanager
async def server(tmp_path, node_id: str = "n1", *, direct: bool = True, credential=None):
    store = SQLiteStore(tmp_path / "s.db")
    node = Node(CounterApp(), store, LoadMeter(1e6), BackendConfig(node_id=node_id, direct=True))
    srv = BackendServer(
        node, max_message=64 * 1024, credential=credential, direct=direct, max_items=10_000
    )
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
        # within max_message, but 20,000 lists once decoded (the limit here is 10,000)
        ([HELLO, '{"t":"msg","seq":1,"ack":0,"d":[' + "[]," * 20000 + "[]]}"], 1009),
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
    async with server(tmp_path, credential=CRED) as (url, node):
        with pytest.raises(InvalidStatus) as exc:
            await connect(url)
        assert exc.value.response.status_code == 400
        node.join_control_plane()
        node.grant_lease(float("inf"))
        node.set_view(static_table(["n1", "n2"]))
        assert node.view is not None
        theirs = next(k for k in (f"k{i}" for i in range(200)) if node.view.route(k).node == "n2")
        route = node.view.route(theirs)
        assert route is not None
        with pytest.raises(InvalidStatus) as exc:
            await connect(url, additional_headers=route_headers(theirs, 0))
        assert exc.value.response.status_code == 421


CRED = node_credential("cluster-secret", "n1")


def route_headers(
    key: str,
    epoch: int,
    *,
    cred: str = CRED,
    node: str = "n1",
    signed: dict[str, Any] | None = None,
):
    """Headers for ``key`` at ``epoch``; ``signed`` changes what the proof signs instead."""
    claim = RouteClaim(key, slot_of(key), epoch, node, int(time.time() * 1000), "nonce1")
    claim = dataclasses.replace(claim, **(signed or {}))
    return {
        "X-Route-Key": quote_key(key),
        "X-Route-Slot": str(slot_of(key)),
        "X-Route-Epoch": str(epoch),
        "X-Route-Proof": sign_claim(cred, claim),
    }


async def test_only_upgrades_a_gateway_vouched_for_are_served(tmp_path):
    """Defect 7 (and the trust boundary): with direct mode off, a backend refuses any
    upgrade without a valid route proof, so nobody can assert an epoch but a gateway."""
    async with server(tmp_path, direct=False, credential=CRED) as (url, node):
        forged = [
            {},  # a client connecting straight to the backend
            {"X-Route-Key": "k", "X-Route-Slot": str(slot_of("k")), "X-Route-Epoch": "99"},
            route_headers("k", 99, cred=node_credential("other-secret", "n1")),
            route_headers("k", 99, node="n2"),  # a claim made for another node
            route_headers("k", 99, signed={"epoch": 5}),  # signed for another epoch
            route_headers("k", 99, signed={"key": "j"}),  # signed for another key
            route_headers("k", 99, signed={"slot": 7}),  # signed for another slot
            route_headers("k", 99, signed={"issued_ms": int(time.time() * 1000) - 120_000}),
        ]
        for headers in forged:
            with pytest.raises(InvalidStatus) as exc:
                await connect(f"{url}?key=k", additional_headers=headers)
            assert exc.value.response.status_code == 403, headers
        async with connect(url, additional_headers=route_headers("k", 7)) as ws:
            await ws.send(orjson.dumps(HELLO).decode())
            assert orjson.loads(await ws.recv())["t"] == "welcome"
            assert node.keys["k"].epoch == 7


async def test_keys_in_any_script(tmp_path):
    """Defect 10: the key travels percent-encoded in the gateway's header."""
    async with server(tmp_path, direct=False, credential=CRED) as (url, node):
        for key in ("café", "€ room", "键", "a+b c%"):
            async with connect(url, additional_headers=route_headers(key, 1)) as ws:
                await ws.send(orjson.dumps(HELLO).decode())
                assert orjson.loads(await ws.recv())["t"] == "welcome"
            assert key in node.keys


async def test_invalid_utf8_text_frame_is_1007(tmp_path):
    async with server(tmp_path) as (url, _):
        async with connect(f"{url}?key=k") as ws:
            await ws.send(orjson.dumps(HELLO).decode())
            await ws.recv()
            # a text frame whose payload is not UTF-8, written below the library's checks
            ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
            for data in ws.protocol.data_to_send():
                ws.transport.write(data)
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.recv()
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1007


async def test_client_close_1000_ends_its_session(tmp_path):
    async with server(tmp_path) as (url, _):
        async with connect(f"{url}?key=k") as ws:
            await ws.send(orjson.dumps(HELLO).decode())
            sid = orjson.loads(await ws.recv())["sid"]
        async with connect(f"{url}?key=k") as ws:
            await ws.send(orjson.dumps({"t": "hello", "sid": sid, "last": 0}).decode())
            assert orjson.loads(await ws.recv())["resumed"] is False
            await ws.close(1001)  # going away: resumable
        # (a close other than 1000 keeps the session)


async def test_hello_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr("backend.server.HELLO_TIMEOUT_S", 0.2)
    async with server(tmp_path) as (url, _):
        assert await close_code_after(f"{url}?key=k") == 4502
