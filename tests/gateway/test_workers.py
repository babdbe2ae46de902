"""``--workers 2``: a real gateway process whose two workers share the client port."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from loadtest.bench_systems import consecutive_free_ports
from loadtest.topology import Topology
from tests.gateway.gwproc import ADMIN_TOKEN, gateway_process, plain_server
from tests.gateway.test_metrics import samples

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or AUTH) as r:
        text = await r.text()
        try:
            return r.status, await r.json(content_type=None)
        except ValueError:
            return r.status, text


async def up(url: str) -> None:
    for _ in range(100):
        with contextlib.suppress(aiohttp.ClientError, OSError):
            if (await get(f"{url}/healthz"))[0] == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not up")


async def test_both_workers_accept_and_sigterm_drains_both(tmp_path):
    async with (
        plain_server() as backend,
        gateway_process(
            tmp_path,
            "--static-backend",
            backend,
            "--workers",
            "2",
            "--drain-window-s",
            "0.5",
            admin_ports=2,
        ) as gw,
    ):
        admins = [f"http://127.0.0.1:{gw.admin_port + i}" for i in range(2)]
        await up(admins[1])
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(gw.url(f"k{i}"))) for i in range(40)]
            for ws in clients:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            upgraded = []
            for a in admins:
                status, text = await get(f"{a}/metrics")
                assert status == 200
                upgraded.append(samples(text)["gateway_upgraded_total"])
            assert sum(upgraded) == 40 and all(n > 0 for n in upgraded), upgraded
            gw.proc.send_signal(signal.SIGTERM)
            codes = []
            for ws in clients:
                with contextlib.suppress(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                codes.append(ws.close_code)
            assert set(codes) == {1001}
        assert await gw.exited(15) == 0


async def test_a_move_committed_by_worker_0_is_routed_by_worker_1_within_a_second(tmp_path):
    t = Topology(
        tmp_path / "topo",
        backends=2,
        rebalance=False,
        admin_port=consecutive_free_ports(2),
        extra_gateway_args=["--workers", "2"],
    )
    await t.start()
    try:
        auth = {"Authorization": f"Bearer {t.admin_token}"}
        worker1 = f"http://127.0.0.1:{t.admin_port + 1}"
        await up(worker1)
        for _ in range(50):  # worker 1 has read the table of both nodes
            if (await get(f"{worker1}/readyz", auth))[0] == 200:
                break
            await asyncio.sleep(0.1)
        status, table = await get(f"{worker1}/v1/table", auth)
        assert status == 200 and set(table["slots_by_node"]) == {"node-1", "node-2"}
        key = "room:moved"
        _, full = await get(f"{t.admin_url}/v1/table?full=1", auth)
        from clientlib.kernel.routing import SlotTable

        owner = SlotTable.from_json(full).route(key)
        assert owner is not None
        dst = "node-2" if owner.node == "node-1" else "node-1"
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{t.admin_url}/v1/move", json={"key": key, "to": dst}, headers=auth) as r,
        ):
            assert r.status == 200, await r.text()
        committed = time.monotonic()
        while True:
            _, table = await get(f"{worker1}/v1/table", auth)
            if table["overrides"].get(key, [None])[0] == dst:
                break
            assert time.monotonic() - committed < 1.0, table["overrides"]
            await asyncio.sleep(0.02)
        status, text = await get(f"{worker1}/metrics", auth)
        assert samples(text)['gateway_route_reloads_total{result="ok"}'] >= 2
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 15.0)
