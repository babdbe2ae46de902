"""The session protocol as docs/protocol.md states it, spoken by a client written from
the page alone (tests/e2e/docs_client.py), against a real gateway and counter backends:
normal traffic, a forced move, a backend SIGTERM, a gateway kill -9, the end of a
session, a refused resume, and keys that need escaping. Every reply is checked exactly
once and in order both ways (the counter's values are consecutive)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from loadtest.topology import Topology
from tests.e2e.conftest import admin_post, owner_of
from tests.e2e.docs_client import (
    Backoff,
    DocsClient,
    action_for,
    key_url,
    parse_hint,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

N = 300


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    t = Topology(tmp_path_factory.mktemp("docs") / "topo", backends=3, capacity=100000)
    asyncio.run(t.start())
    try:
        yield t
    finally:
        t.stop(10.0)


def fast_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.5, rng=random.Random(7))


@contextlib.asynccontextmanager
async def docs_client(t: Topology, key: str, **kw: Any) -> AsyncIterator[DocsClient]:
    c = DocsClient(t.url, key, backoff=kw.pop("backoff", fast_backoff()), **kw)
    await c.start(timeout=20)
    try:
        yield c
    finally:
        await c.close()


async def stream(
    c: DocsClient,
    n: int,
    at: int | None = None,
    fault: Callable[[], Awaitable[None]] | None = None,
    first_n: int = 1,
) -> list[dict[str, Any]]:
    """Send n counter messages (``fault`` after ``at`` of them) and check every reply comes
    back exactly once, in order, with the key's counter consecutive."""
    got: list[dict[str, Any]] = []

    async def reader() -> None:
        while len(got) < n:
            got.append(await c.recv(timeout=30))

    r = asyncio.create_task(reader())
    fault_task = None
    for i in range(first_n, first_n + n):
        await c.send({"n": i})
        if i - first_n + 1 == at and fault is not None:
            fault_task = asyncio.create_task(fault())
        if i % 20 == 0:
            await asyncio.sleep(0.005)  # let the fault interleave with traffic in flight
    await asyncio.wait_for(r, 40)
    if fault_task is not None:
        await fault_task
    assert [m["n"] for m in got] == list(range(first_n, first_n + n))
    base = got[0]["count"]
    assert [m["count"] for m in got] == list(range(base, base + n))
    await c.wait_all_acked()
    return got


def closes(c: DocsClient) -> list[int | None]:
    return [e.code for e in c.events if e.kind == "closed"]


async def connections(t: Topology) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        return await t.admin_get(s, "/v1/connections")


async def test_rules_are_pure() -> None:
    """The close-code table, hints and backoff as the page states them."""
    assert action_for(4000) == "reconnect_window"
    assert action_for(4123) == "reconnect" and action_for(4777) == "stop"
    assert action_for(3000) == "reconnect"
    assert parse_hint('{"window_ms": 800}') == {"window_ms": 800}
    assert parse_hint('{"after_ms": 0}') == {} and parse_hint("going away") == {}
    assert parse_hint('{"after_ms": 3600001}') == {}
    b = Backoff(rng=random.Random(1))
    ds = [b.delay("reconnect", {}) for _ in range(10)]
    assert all(0 <= d <= min(30, 0.25 * 2**i) for i, d in enumerate(ds))
    assert 2.0 <= b.delay("retry_after", {"after_ms": 2000}) <= 2.5
    assert 0 <= b.delay("reconnect_window", {}) <= 1.0
    assert b.attempt == 12  # every failure counts, whatever its action
    assert b.delay("reconnect", {}, lived=10.0) <= 0.25 and b.attempt == 0
    assert b.delay("reconnect", {}) <= 0.25 and b.attempt == 1


@pytest.mark.parametrize(
    "key",
    [
        "docs:plain",
        "a+b c",  # `+` must travel as %2B, the space as %20
        "100% sure %41%2B",  # literal percent signs, not escapes
        "ключ:日本語:🙂",  # non-ASCII, outside the BMP too
    ],
)
async def test_normal_traffic_and_escaped_keys(topo: Topology, key: str) -> None:
    async with docs_client(topo, key) as c:
        await stream(c, N)
        conns = await connections(topo)
        assert key in json.dumps(conns, ensure_ascii=False), conns
        assert c.duplicates == 0 and c.sessions == 1


async def test_a_key_reaches_the_backend_unchanged(topo: Topology) -> None:
    """`a+b` and `a b` are different keys: each has its own counter."""
    async with docs_client(topo, "docs:x+y") as plus, docs_client(topo, "docs:x y") as space:
        a = await stream(plus, 5)
        b = await stream(space, 5)
        c = await stream(plus, 5, first_n=6)
        assert c[0]["count"] == a[-1]["count"] + 1
        assert b[0]["count"] == 1


async def test_forced_move(topo: Topology) -> None:
    key = "docs:move"
    async with docs_client(topo, key) as c:
        src = await owner_of(topo, key)
        dst = next(n for n in topo.nodes if n != src)

        async def move() -> None:
            await admin_post(topo, "/v1/move", {"key": key, "to": dst})

        await stream(c, N, N // 3, move)
        assert await owner_of(topo, key) == dst
        assert 4000 in closes(c)
        assert c.resumes >= 1 and c.not_resumed == 0


async def wait_alive(t: Topology, node: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            n = (await t.status(s))["nodes"].get(node)
            if n and n["alive"] and n["slots"] > 0:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{node} did not come back")


async def test_backend_sigterm(topo: Topology) -> None:
    key = "docs:term"
    async with docs_client(topo, key) as c:
        owner = await owner_of(topo, key)

        async def term() -> None:
            topo.kill(owner, signal.SIGTERM)

        await stream(c, N, N // 3, term)
        assert await owner_of(topo, key) != owner
        assert c.resumes >= 1 and c.not_resumed == 0
        assert closes(c)[0] == 4000
    await asyncio.get_running_loop().run_in_executor(None, topo.nodes[owner].wait, 10.0)
    topo.start_backend(owner)
    await wait_alive(topo, owner)


async def test_gateway_kill9_and_restart(topo: Topology) -> None:
    key = "docs:gw"
    async with docs_client(topo, key) as c:

        async def kill_gateway() -> None:
            assert topo.gateway is not None
            topo.gateway.signal(signal.SIGKILL)
            topo.gateway.wait(5)
            await asyncio.sleep(0.3)
            topo.start_gateway()  # same ports, same state dir

        await stream(c, N, N // 3, kill_gateway)
        assert 1006 in closes(c) or 1001 in closes(c), c.events
        assert c.resumes >= 1 and c.not_resumed == 0
    await topo.wait_ready(20)


async def raw_hello(t: Topology, key: str, hello: dict[str, Any]) -> dict[str, Any]:
    async with connect(key_url(t.url, key), open_timeout=5) as ws:
        await ws.send(json.dumps(hello))
        w: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.close(1000)
        return w


async def test_ending_a_session_for_good(topo: Topology) -> None:
    """Rule 9: close 1000 and the server forgets the session at once; the key's state
    stays (the counter goes on)."""
    key = "docs:end"
    c = DocsClient(topo.url, key, backoff=fast_backoff())
    await c.start()
    got = await stream(c, 10)
    sid, last, ack = c.sid, c.recv_last, c.server_acked
    await c.close()
    w = await raw_hello(topo, key, {"t": "hello", "sid": sid, "last": last, "ack": ack})
    assert w["resumed"] is False and w["sid"] != sid and w["last"] == 0
    async with docs_client(topo, key) as c2:
        again = await stream(c2, 5)
        assert again[0]["count"] == got[-1]["count"] + 1


async def test_a_close_other_than_1000_leaves_the_session_resumable(topo: Topology) -> None:
    """Rule 9: only 1000 ends a session; 1001 (or any other code) leaves it resumable."""
    key = "docs:1001"
    async with connect(key_url(topo.url, key), open_timeout=5) as ws:
        await ws.send(json.dumps({"t": "hello", "sid": None, "last": 0, "ack": 0}))
        sid = json.loads(await ws.recv())["sid"]
        await ws.send(json.dumps({"t": "msg", "seq": 1, "ack": 0, "d": {"n": 1}}))
        assert json.loads(await ws.recv())["d"] == {"n": 1, "count": 1}
        await ws.close(1001)
    w = await raw_hello(topo, key, {"t": "hello", "sid": sid, "last": 1, "ack": 1})
    assert w == {"t": "welcome", "sid": sid, "resumed": True, "last": 1}


async def test_a_dropped_connection_resumes(topo: Topology) -> None:
    key = "docs:drop"
    async with docs_client(topo, key) as c:

        async def drop() -> None:
            c.drop()

        await stream(c, N, N // 2, drop)
        assert 1006 in closes(c)
        assert c.resumes == 1 and c.not_resumed == 0


async def test_resume_with_last_beyond_what_was_sent_is_refused(topo: Topology) -> None:
    """Rule 4: `hello.last` beyond what the server sent: `resumed: false`, a new sid;
    the client renumbers from 1 (rule 6) and the key's state goes on."""
    key = "docs:beyond"
    lie = {"on": False}

    def override(h: dict[str, Any]) -> dict[str, Any]:
        if lie["on"]:
            lie["on"] = False
            return {**h, "last": h["last"] + 5}
        return h

    async with docs_client(topo, key, hello_override=override) as c:
        first = await stream(c, 20)
        old = c.sid
        lie["on"] = True
        c.drop()
        second = await stream(c, 20, first_n=21)
        assert c.not_resumed == 1 and c.sid != old
        assert second[0]["count"] == first[-1]["count"] + 1
        assert c.next_seq == 21  # renumbered: this session's 20 messages only


async def test_hello_with_another_keys_sid_is_not_resumed(topo: Topology) -> None:
    async with docs_client(topo, "docs:mine") as mine:
        await stream(mine, 3)
        assert mine.sid is not None
        w = await raw_hello(topo, "docs:theirs", {"t": "hello", "sid": mine.sid, "last": 0})
        assert w["resumed"] is False and w["sid"] != mine.sid
        # the owner of the sid is unaffected
        await stream(mine, 3, first_n=4)
        assert closes(mine) == []


async def test_a_newer_connection_takes_the_session_4503(topo: Topology) -> None:
    """Rule: the same session resumed on a newer connection; the older gets 4503."""
    key = "docs:conflict"
    c = DocsClient(topo.url, key, backoff=fast_backoff())
    await c.start()
    try:
        await stream(c, 3)
        w = await raw_hello(
            topo, key, {"t": "hello", "sid": c.sid, "last": c.recv_last, "ack": c.server_acked}
        )
        assert w["resumed"] is True and w["sid"] == c.sid
        async with asyncio.timeout(10):
            while c.stopped is None:
                await asyncio.sleep(0.02)
        assert c.stopped.code == 4503
    finally:
        await c.abort()
