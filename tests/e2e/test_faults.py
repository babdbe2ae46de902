"""Faults with real processes: a frozen (zombie) node, a rolling restart, a reconnect storm,
and bad control-plane input."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clientlib import Client
from clientlib.kernel.backoff import BackoffPolicy
from clientlib.kernel.credentials import node_credential
from loadtest.topology import Topology
from tests.e2e.conftest import client, owner_of, stream_exact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


async def wait_alive(t: Topology, node: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            st = await t.status(s)
            n = st["nodes"].get(node)
            if n and n["alive"] and n["slots"] > 0:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{node} did not come back")


async def test_zombie_node_is_fenced(topo: Topology):
    """SIGSTOP the owner past its lease: its keys go elsewhere; when it wakes up, its stale
    writes are refused by the store and nothing is lost or duplicated (write-through)."""
    async with client(topo, "doc:zombie") as c:
        owner = await owner_of(topo, "doc:zombie")

        async def freeze() -> None:
            topo.kill(owner, signal.SIGSTOP)
            await asyncio.sleep(4.5)  # lease 3 s + a tick
            topo.kill(owner, signal.SIGCONT)

        await stream_exact(c, 3000, 1000, freeze)
        assert await owner_of(topo, "doc:zombie") != owner


async def test_rolling_restart_loses_nothing(topo: Topology):
    keys = [f"roll:{i}" for i in range(4)]
    async with contextlib_clients(topo, keys) as clients:

        async def roll() -> None:
            for name in list(topo.nodes):
                topo.kill(name, signal.SIGTERM)
                await asyncio.get_running_loop().run_in_executor(None, topo.nodes[name].wait, 15)
                topo.start_backend(name)
                await wait_alive(topo, name)

        tasks = [
            stream_exact(c, 2500, 200, roll if i == 0 else _noop) for i, c in enumerate(clients)
        ]
        await asyncio.gather(*tasks)
        assert sum(c.stats.resumes for c in clients) >= 1
        assert all(c.stats.not_resumed == 0 for c in clients)


async def _noop() -> None:
    return None


class contextlib_clients:
    def __init__(self, t: Topology, keys: list[str]):
        self.clients = [Client(t.url, k, ping_interval=1.0, ping_timeout=2.0) for k in keys]

    async def __aenter__(self) -> list[Client]:
        for c in self.clients:
            await c.start()
        return self.clients

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.close()


async def test_reconnect_storm_after_gateway_kill(topo: Topology):
    """1,500 sessions dropped at once (kill -9 of the gateway): every one is back and
    resumed, and the gateway survives the storm."""
    n = 1500
    clients = [
        Client(
            topo.url,
            f"storm:{i % 300}",
            ping_interval=None,
            backoff=BackoffPolicy(base=0.2, cap=3.0),
        )
        for i in range(n)
    ]
    sem = asyncio.Semaphore(100)

    async def start(c: Client) -> None:
        async with sem:
            await c.start()

    await asyncio.gather(*(start(c) for c in clients))
    for c in clients:
        await c.send({"n": 1})
    assert topo.gateway is not None
    topo.gateway.signal(signal.SIGKILL)
    topo.gateway.wait(5)
    t0 = time.monotonic()
    topo.start_gateway()
    for c in clients:
        await c.send({"n": 2})
    replies = await asyncio.wait_for(
        asyncio.gather(*(asyncio.gather(c.recv(), c.recv()) for c in clients)), 60
    )
    took = time.monotonic() - t0
    assert all([r["n"] for r in pair] == [1, 2] for pair in replies)
    assert sum(c.stats.resumes for c in clients) >= n * 0.99
    print(f"storm: {n} sessions back in {took:.1f}s")
    for c in clients:
        await c.close()


def node_headers(t: Topology, node: str, cred: str | None = None) -> dict[str, str]:
    return {
        "X-Node-Id": node,
        "Authorization": f"Bearer {cred or node_credential(t.secret, node)}",
    }


def register_msg(node: str, port: int = 9, incarnation: str = "test") -> bytes:
    return orjson.dumps(
        {
            "t": "register",
            "node": node,
            "incarnation": incarnation,
            "addr": f"127.0.0.1:{port}",
            "capacity": 1000,
            "keys": {},
        }
    )


async def test_control_plane_bad_input(topo: Topology):
    url = f"ws://127.0.0.1:{topo.admin_port}/v1/control"
    for headers in (
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {topo.secret}"},  # the cluster secret is no node's credential
        node_headers(topo, "node-1", cred=node_credential(topo.secret, "node-2")),
        node_headers(topo, "node-1", cred=node_credential("another-secret", "node-1")),
    ):
        with pytest.raises(InvalidStatus) as exc:
            await connect(url, additional_headers=headers)
        assert exc.value.response.status_code == 401
    async with aiohttp.ClientSession() as s:
        before = await topo.status(s)
    async with connect(url, additional_headers=node_headers(topo, "x")) as ws:
        for bad in (
            "not json",
            '{"t":"released","move":1}',  # not registered
            '{"t":"register","node":"x","incarnation":"i","addr":"nowhere","capacity":1}',
            '{"t":"register","node":"x","incarnation":"i","addr":"127.0.0.1:1","capacity":-5}',
            register_msg("node-1"),  # a session may speak only for the node it proved it is
        ):
            await ws.send(bad)
            assert orjson.loads(await ws.recv())["t"] == "error"
    async with aiohttp.ClientSession() as s:
        after = await topo.status(s)
    assert after["moves"] == before["moves"]
    assert set(after["nodes"]) == set(before["nodes"])


async def test_a_node_id_in_use_cannot_be_taken(topo: Topology):
    """A second process with node-1's credential (or a second backend started with the same
    --node-id) is refused while node-1 lives: it takes none of its traffic, and node-1's
    address stays."""
    url = f"ws://127.0.0.1:{topo.admin_port}/v1/control"
    async with aiohttp.ClientSession() as s:
        before = (await topo.admin_get(s, "/v1/nodes"))["nodes"]
    async with connect(url, additional_headers=node_headers(topo, "node-1")) as ws:
        await ws.send(register_msg("node-1", port=1, incarnation="impostor"))
        answer = orjson.loads(await ws.recv())
        assert answer["t"] == "refused" and "another process" in answer["reason"]
    async with aiohttp.ClientSession() as s:
        after = (await topo.admin_get(s, "/v1/nodes"))["nodes"]
    addr = {n["id"]: n["address"] for n in after}
    assert addr == {n["id"]: n["address"] for n in before}
    async with client(topo, "still:served") as c:
        await c.send({"n": 1}, wait_ack=True)


async def test_move_that_times_out_is_aborted_cleanly(topo: Topology):
    """A source that never acknowledges a release: the move is aborted after the timeout
    and the source still owns the unit."""
    url = f"ws://127.0.0.1:{topo.admin_port}/v1/control"
    async with connect(url, additional_headers=node_headers(topo, "mute")) as ws:
        await ws.send(register_msg("mute"))

        async def keep_alive() -> None:
            seq = 0
            while True:
                seq += 1
                report = {"t": "report", "seq": seq, "load": {"rate": 0.0, "capacity": 1000}}
                await ws.send(orjson.dumps(report))
                await asyncio.sleep(0.5)

        pinger = asyncio.create_task(keep_alive())
        try:
            async with aiohttp.ClientSession() as s:
                slot = None
                for _ in range(50):  # the join rule hands the new node idle slots
                    table = await topo.admin_get(s, "/v1/table?full=1")
                    if "mute" in table["owners"]:
                        slot = table["owners"].index("mute")
                        break
                    await asyncio.sleep(0.2)
                assert slot is not None
                for _ in range(50):  # the join may come in several moves: let them finish
                    async with s.post(
                        f"{topo.admin_url}/v1/move",
                        json={"slot": slot, "to": "node-1"},
                        headers={"Authorization": f"Bearer {topo.admin_token}"},
                    ) as r:
                        error = (await r.json())["error"]
                        assert r.status == 409
                    if "in flight" not in error:
                        break
                    await asyncio.sleep(0.2)
                assert "aborted" in error
                table = await topo.admin_get(s, "/v1/table?full=1")
                assert table["owners"][slot] == "mute"
                moves = await topo.admin_get(s, "/v1/moves")
                assert moves["moves"][-1]["outcome"] == "aborted: timeout"
        finally:
            pinger.cancel()


async def test_everyone_hot_sheds_new_upgrades(tmp_path):
    """When every node is hot, moving helps nobody: new upgrades get 503 + Retry-After,
    existing sessions keep running, and admission reopens when load falls."""
    t = Topology(tmp_path / "hot", backends=2, capacity=40, durability="handoff")
    await t.start()
    try:
        clients = [Client(t.url, f"hot:{i}", ping_interval=None) for i in range(20)]
        for c in clients:
            await c.start()

        async def pump(c: Client, stop: asyncio.Event) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await c.send({"n": n})
                await c.recv()
                await asyncio.sleep(0.1)  # 20 clients x 10 msg/s = 200 msg/s >> 2 x 40

        stop = asyncio.Event()
        pumps = [asyncio.create_task(pump(c, stop)) for c in clients]
        async with aiohttp.ClientSession() as s:
            for _ in range(60):
                if (await t.status(s)).get("shedding"):
                    break
                await asyncio.sleep(0.25)
            assert (await t.status(s))["shedding"]
            with pytest.raises(InvalidStatus) as exc:
                await connect(f"{t.url}?key=late")
            assert exc.value.response.status_code == 503
            assert int(exc.value.response.headers["Retry-After"]) >= 1
            before = [c.stats.received for c in clients]
            await asyncio.sleep(1.0)
            assert all(c.stats.received > b for c, b in zip(clients, before, strict=True))
            stop.set()
            await asyncio.gather(*pumps)
            for _ in range(60):  # load falls: admission reopens
                if not (await t.status(s)).get("shedding"):
                    break
                await asyncio.sleep(0.25)
            assert not (await t.status(s))["shedding"]
        async with connect(f"{t.url}?key=late"):
            pass
        for c in clients:
            await c.close()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)
