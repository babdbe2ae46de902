"""End to end with real processes: a backend with a finite capacity, overloaded, reports
pressure from what it measures, and the rebalancer moves load off it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from clientlib import Client
from loadtest.run import pick_keys
from loadtest.topology import Topology
from tests.e2e.conftest import owner_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SERVICE_US = 20_000  # 50 messages/s per backend
KEYS = 4
RATE = 15.0  # messages/s per key: 60 on one node, 1.2 times its capacity


async def wait_for(
    t: Topology, s: aiohttp.ClientSession, pred: Any, what: str, limit: float = 30.0
) -> dict[str, Any]:
    """Poll /v1/status until ``pred(status)`` holds (the limit only ends a hung run)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        st = await t.status(s)
        if pred(st):
            return st
        assert loop.time() < deadline, f"never saw {what}: {st}"
        await asyncio.sleep(0.25)


async def test_overloaded_backend_reports_pressure_and_load_moves_off(tmp_path):
    t = Topology(
        tmp_path / "topo",
        backends=2,
        capacity=None,
        service_times={"node-1": SERVICE_US, "node-2": SERVICE_US},
    )
    await t.start()
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as s:
            table = await t.admin_get(s, "/v1/table?full=1")
            keys = pick_keys(table["owners"], KEYS, "hot:", "node-1")
            st = await t.status(s)
            # Both backends report the capacity their service time gives (until measured).
            assert {n: v["capacity"] for n, v in st["nodes"].items()} == {
                "node-1": 50.0,
                "node-2": 50.0,
            }

            async def drive(key: str) -> None:
                async with Client(t.url, key) as c:

                    async def drain() -> None:
                        while True:
                            await c.recv()

                    reader = asyncio.create_task(drain())
                    n = 0
                    while not stop.is_set():
                        n += 1
                        await c.send({"n": n})
                        await asyncio.sleep(1 / RATE)
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader

            clients = [asyncio.create_task(drive(k)) for k in keys]
            # The queue builds: node-1's own figures say it is past its capacity.
            st = await wait_for(
                t, s, lambda st: st["nodes"]["node-1"]["pressure"], "pressure on node-1"
            )
            n1 = st["nodes"]["node-1"]
            assert n1["util"] > 1.0 or n1["delay_ms"] > 40, n1
            # The rebalancer moves some of the keys to node-2.
            st = await wait_for(t, s, lambda st: st["moves"] >= 1, "a move")
            owners = [await owner_of(t, k) for k in keys]
            assert "node-2" in owners and "node-1" in owners, owners
            stop.set()
            await asyncio.gather(*clients)
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)
