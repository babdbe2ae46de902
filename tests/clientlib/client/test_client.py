"""The client library against real sockets: a backend node in this process, or a scripted
plain websockets server for the edge cases."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from backend.apps.counter import CounterApp
from backend.config import BackendConfig
from backend.load import LoadMeter
from backend.node import Node
from backend.server import BackendServer
from backend.store import SQLiteStore
from clientlib import (
    Client,
    GaveUp,
    HandshakeRefused,
    SendBufferFull,
    ServerProtocolError,
    StartTimeout,
    SyncClient,
    TerminalClose,
    Unauthorized,
)
from clientlib.kernel.backoff import BackoffPolicy
from clientlib.kernel.session_protocol import CloseCode, CloseHint

pytestmark = pytest.mark.timeout(30)


@contextlib.asynccontextmanager
async def backend(tmp_path, **cfg: Any):
    store = SQLiteStore(tmp_path / "s.db")
    node = Node(CounterApp(), store, LoadMeter(1e6), BackendConfig(direct=True, **cfg))
    srv = BackendServer(node)
    await srv.start("127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{srv.port}/ws", node, srv
    finally:
        assert srv.server is not None
        srv.server.close()
        await srv.server.wait_closed()
        store.close()


@contextlib.asynccontextmanager
async def scripted(handler: Any):
    async with serve(handler, "127.0.0.1", 0) as s:
        yield f"ws://127.0.0.1:{next(iter(s.sockets)).getsockname()[1]}/ws"


async def test_send_recv_wait_ack_and_stats(tmp_path):
    async with backend(tmp_path) as (url, _, _), Client(url, "k") as c:
        await c.send({"n": 1}, wait_ack=True)
        assert c.pending == 0
        assert await c.recv() == {"n": 1, "count": 1}
        for i in range(2, 102):
            await c.send({"n": i})
        got = []
        async for m in c:  # the async iterator
            got.append(m)
            if len(got) == 100:
                break
        assert [m["n"] for m in got] == list(range(2, 102))
        assert c.stats.sent == 101 and c.stats.received == 101
        kinds = []
        while not c.events.empty():
            kinds.append(c.events.get_nowait().kind)
        assert kinds == ["connected"]


async def test_resume_after_server_side_drop(tmp_path):
    async with (
        backend(tmp_path) as (url, _, srv),
        Client(url, "k", backoff=BackoffPolicy(base=0.01, cap=0.05)) as c,
    ):
        for i in range(1, 51):
            await c.send({"n": i})
        for ws in list(srv.conns):
            ws.transport.abort()  # abrupt drop, messages in flight both ways
        for i in range(51, 101):
            await c.send({"n": i})
        got = [await c.recv() for _ in range(100)]
        assert [m["n"] for m in got] == list(range(1, 101))
        assert [m["count"] for m in got] == list(range(1, 101))
        assert c.stats.resumes == 1 and c.resumed


@pytest.mark.parametrize(
    "code,exc",
    [(4500, Unauthorized), (4501, TerminalClose), (4502, TerminalClose), (1008, TerminalClose)],
)
async def test_terminal_codes_are_not_retried(code, exc):
    attempts = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal attempts
        attempts += 1
        await ws.recv()
        await ws.close(code)

    async with scripted(handler) as url:
        with pytest.raises(exc):
            async with Client(url, "k", backoff=BackoffPolicy(base=0.01, cap=0.02)):
                pass
        await asyncio.sleep(0.2)
        assert attempts == 1


async def test_http_refusals():
    def refuse(status: int):
        def pr(conn: ServerConnection, req: Any) -> Any:
            return conn.respond(status, "no\n")

        return pr

    for status, exc in ((401, Unauthorized), (403, HandshakeRefused), (400, HandshakeRefused)):
        async with serve(
            lambda ws: ws.close(), "127.0.0.1", 0, process_request=refuse(status)
        ) as s:
            port = next(iter(s.sockets)).getsockname()[1]
            with pytest.raises(exc):
                async with Client(f"ws://127.0.0.1:{port}/", "k"):
                    pass


async def test_retry_after_hint_is_honoured(tmp_path):
    connects: list[float] = []

    async def handler(ws: ServerConnection) -> None:
        connects.append(time.monotonic())
        await ws.recv()
        if len(connects) == 1:
            await ws.close(CloseCode.TRY_AGAIN_LATER, CloseHint(after_ms=400).encode())
            return
        await ws.send('{"t":"welcome","sid":"s1","resumed":false,"last":0}')
        await ws.wait_closed()

    async with scripted(handler) as url, Client(url, "k", backoff=BackoffPolicy(base=0.01)) as c:
        while len(connects) < 2:
            await asyncio.sleep(0.05)
        assert connects[1] - connects[0] >= 0.4
        assert c.stats.connects >= 1


async def test_server_protocol_violation():
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send('{"t":"welcome","sid":"s1","resumed":false,"last":0}')
        await ws.send('{"t":"msg","seq":5,"ack":0,"d":1}')  # skips 1..4
        await ws.wait_closed()

    async with scripted(handler) as url:
        c = Client(url, "k")
        await c.start()
        with pytest.raises(ServerProtocolError):
            await c.recv()
        await c.close()


async def test_bounded_send_buffer_raise_policy():
    async with scripted(lambda ws: ws.wait_closed()) as url:
        # a server that never answers hello: the client never gets a session
        c = Client(url, "k", max_pending=3, on_full="raise", start_timeout=0.3)
        with pytest.raises(StartTimeout):
            await c.start()
    c2 = Client("ws://127.0.0.1:9/", "k", max_pending=3, on_full="raise")
    for i in range(3):
        await c2.send(i)  # queued while disconnected
    with pytest.raises(SendBufferFull):
        await c2.send(4)
    await c2.close()


async def test_start_timeout_when_nothing_listens():
    with pytest.raises(StartTimeout):
        async with Client(
            "ws://127.0.0.1:9/", "k", start_timeout=0.5, backoff=BackoffPolicy(base=0.05, cap=0.1)
        ):
            pass


async def test_a_welcome_later_than_connect_timeout_is_retried():
    """Defect 8: a slow welcome used to kill the client for good."""
    attempts = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal attempts
        attempts += 1
        await ws.recv()
        if attempts == 1:
            await asyncio.sleep(1.0)  # beyond the client's connect timeout
        await ws.send('{"t":"welcome","sid":"s1","resumed":false,"last":0}')
        await ws.wait_closed()

    async with scripted(handler) as url:
        async with Client(
            url, "k", connect_timeout=0.3, backoff=BackoffPolicy(base=0.01, cap=0.05)
        ) as c:
            assert c.sid == "s1"
        assert attempts == 2


async def test_a_server_that_lost_acknowledged_state_does_not_resume(tmp_path):
    """Defect 8: a backend that restarted from an older write (handoff mode, crash) had
    processed fewer of our messages than it acknowledged: hello.ack makes it answer
    resumed:false instead of resuming into a seq gap (a terminal 4502)."""
    async with (
        backend(tmp_path, durability="handoff") as (url, node, srv),
        Client(url, "k", backoff=BackoffPolicy(base=0.01, cap=0.05)) as c,
    ):
        await c.send({"n": 1}, wait_ack=True)
        node.flush_all()  # written with 1 processed
        await c.send({"n": 2}, wait_ack=True)
        await c.send({"n": 3}, wait_ack=True)
        node.keys.clear()  # the crash: memory gone, the store has the state after 1
        for ws in list(srv.conns):
            ws.transport.abort()
        await c.send({"n": 4}, wait_ack=True)
        assert c.stats.not_resumed == 1 and not c.resumed
        got = [await c.recv() for _ in range(4)]
        assert [m["n"] for m in got][-1] == 4  # the session goes on, renumbered


async def test_several_gateways_fail_over():
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send('{"t":"welcome","sid":"s1","resumed":false,"last":0}')
        await ws.wait_closed()

    async with scripted(handler) as live:
        dead = "ws://127.0.0.1:9/ws"
        async with Client(
            [dead, live], "k", rand=lambda: 0.0, backoff=BackoffPolicy(base=0.01, cap=0.05)
        ) as c:
            assert c.url.startswith(live)  # the dead one was tried first, then the next


async def test_give_up_after():
    c = Client(
        "ws://127.0.0.1:9/",
        "k",
        give_up_after=0.3,
        start_timeout=5,
        backoff=BackoffPolicy(base=0.02, cap=0.05),
    )
    with pytest.raises(GaveUp):
        await c.start()
    await c.close()


def test_bad_arguments():
    with pytest.raises(ValueError):
        Client("http://x/", "k")
    with pytest.raises(ValueError):
        Client("ws://x/", "")
    with pytest.raises(ValueError):
        Client("ws://x/", "k", on_full="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Client([], "k")
    with pytest.raises(ValueError):
        Client("ws://x/", "k", give_up_after=0)


async def test_sync_client(tmp_path):
    async with backend(tmp_path) as (url, _, _):

        def use() -> list[Any]:
            with SyncClient(url, "sync") as c:
                c.send({"n": 1}, wait_ack=True)
                c.send({"n": 2})
                return [c.recv(timeout=5), c.recv(timeout=5)]

        got = await asyncio.get_running_loop().run_in_executor(None, use)
        assert [m["count"] for m in got] == [1, 2]
