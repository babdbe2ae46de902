"""End-to-end fixtures: real gateway and backend processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from clientlib import Client
from loadtest.topology import Topology


@pytest.fixture
async def topo(tmp_path) -> AsyncIterator[Topology]:
    t = Topology(tmp_path / "topo", backends=3, capacity=100000, durability="write-through")
    await t.start()
    try:
        yield t
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)


async def admin_post(t: Topology, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{t.admin_url}{path}", json=body, headers={"Authorization": f"Bearer {t.admin_token}"}
        ) as r,
    ):
        out: dict[str, Any] = await r.json()
        assert r.status == 200, out
        return out


async def owner_of(t: Topology, key: str) -> str:
    from clientlib.kernel.routing import SlotTable

    async with aiohttp.ClientSession() as s:
        table = SlotTable.from_json(await t.admin_get(s, "/v1/table?full=1"))
    route = table.route(key)
    assert route is not None
    return route.node


async def stream_exact(
    client: Client, n: int, at: int, fault: Callable[[], Awaitable[None]]
) -> None:
    """Send n counter messages, run ``fault`` after ``at`` of them, and check that every
    reply comes back exactly once, in order, with the key's counter consecutive."""
    got: list[dict[str, Any]] = []

    async def reader() -> None:
        while len(got) < n:
            got.append(await client.recv())

    r = asyncio.create_task(reader())
    fault_task = None
    for i in range(1, n + 1):
        await client.send({"n": i})
        if i == at:
            fault_task = asyncio.create_task(fault())
        if i % 200 == 0:
            await asyncio.sleep(0.01)  # let the fault interleave with traffic in flight
    await asyncio.wait_for(r, 60)
    if fault_task is not None:
        await fault_task
    assert [m["n"] for m in got] == list(range(1, n + 1))
    first = got[0]["count"]
    assert [m["count"] for m in got] == list(range(first, first + n))


@contextlib.asynccontextmanager
async def client(t: Topology, key: str, **kw: Any) -> AsyncIterator[Client]:
    async with Client(t.url, key, ping_interval=1.0, ping_timeout=2.0, **kw) as c:
        yield c
