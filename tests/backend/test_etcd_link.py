"""A node's control session over a real etcd: registration, the lease, orders."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from clientlib.kernel import control_protocol as cp
from tests.etcd_env import client, etcd, etcd_node, layout, needs_etcd, until

pytestmark = [needs_etcd, pytest.mark.timeout(60)]
__all__ = ["etcd", "layout"]  # fixtures


async def _stop(*tasks):
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def test_registration_is_refused_while_another_incarnation_holds_the_id(etcd, layout):
    first, _ = etcd_node(etcd, layout, "n1")
    second, _ = etcd_node(etcd, layout, "n1")
    assert await first._register()
    assert not await second._register()
    assert second.agent.refused is not None and "held by incarnation" in second.agent.refused
    assert not second.agent.node.serving()
    # The same process registering again (a lease it lost track of) is taken back.
    first.lease = 0
    assert await first._register()
    # Once the holder gives its lease back, the other process gets the id.
    await first.close()
    assert await second._register()
    assert second.agent.node.serving()
    await second.close()
    for link in (first, second):
        await link.client.transport.close()


async def test_a_node_cut_off_from_etcd_stops_serving_before_its_key_expires(etcd, layout):
    link, transport = etcd_node(etcd, layout, "n1", lease_s=2)
    node = link.agent.node
    run = asyncio.create_task(link.run())
    watcher, wt = client(etcd)
    try:
        await until(node.serving, 10, "registration")
        await asyncio.sleep(1.5)  # a few keep-alives: the lease is renewed
        assert node.serving()
        transport.cut = True
        cut_at = time.monotonic()
        await until(lambda: not node.serving(), 5, "the node to stop serving")
        stopped = time.monotonic()
        key = layout.node("n1")

        async def gone() -> bool:
            kvs, _ = await watcher.get(key)
            return not kvs

        while not await gone():
            assert time.monotonic() - cut_at < 10, "etcd never expired the node's key"
            await asyncio.sleep(0.05)
        expired = time.monotonic()
        # The serving rule's order: the node stops first, then etcd gives the id away.
        assert stopped < expired, (stopped - cut_at, expired - cut_at)
        assert stopped - cut_at <= link.lease_s + 0.5  # within its lease
        transport.cut = False
        await until(node.serving, 10, "registering again once etcd is back")
    finally:
        await wt.close()
        await _stop(run)
        await link.close()
        await link.client.transport.close()


async def test_orders_are_carried_out_and_answered(etcd, layout):
    link, _ = etcd_node(etcd, layout, "n1")
    run = asyncio.create_task(link.run())
    c, ct = client(etcd)
    try:
        await until(link.registered.is_set, 10, "registration")
        release = cp.Release(7, 99, ((("slot", 3), "n2"),))
        await c.put(layout.release("n1", 7), cp.encode(release))

        async def answered() -> list[object]:
            kvs, _ = await c.get(layout.released("n1", 7))
            return [cp.decode(kv.value) for kv in kvs]

        deadline = time.monotonic() + 10
        while not (got := await answered()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert isinstance(got[0], cp.Released) and got[0].move == 7
        # Leaving: the answer is put, and the plane's "left" ends the wait.
        leaving = asyncio.create_task(link.leave(timeout=5))
        deadline = time.monotonic() + 10
        while not (await c.get(layout.leave("n1")))[0]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await c.put(layout.left("n1"), cp.encode(cp.Left()))
        assert await leaving
    finally:
        await ct.close()
        await _stop(run)
        await link.close()
        await link.client.transport.close()
