"""The control plane on a real etcd: the directory by CAS, leader fencing, the election."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.etcd import Put
from gateway.controlplane.core import CoreConfig
from gateway.controlplane.etcd_plane import EtcdController
from gateway.controlplane.planner import Move
from gateway.etcd_routes import EtcdMirror, EtcdRoutes
from gateway.metrics import GatewayMetrics
from tests.etcd_env import client, etcd, etcd_node, layout, needs_etcd, until

pytestmark = [needs_etcd, pytest.mark.timeout(90)]
__all__ = ["etcd", "layout"]  # fixtures


class Gw:
    """One in-process gateway's control side: mirror, routes, controller."""

    def __init__(self, etcd, layout, name: str):
        self.client, self.transport = client(etcd)
        self.mirror = EtcdMirror(self.client, layout)
        self.routes = EtcdRoutes(self.mirror)
        self.ctl = EtcdController(
            self.client,
            self.mirror,
            "secret",
            GatewayMetrics(),
            gateway_id=name,
            admin=name,
            election_lease_s=2,
            config=CoreConfig(rebalance=False, settle_s=0.2),
            tick_s=0.1,
            routes_ready=self.routes.ready,
        )

    def start(self) -> None:
        self.mirror.start()
        self.ctl.start()

    async def crash(self) -> None:
        """Stop without a word: no lease given back (kill -9)."""
        self.ctl._lease = 0
        assert self.ctl._task is not None
        self.ctl._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.ctl._task
        self.ctl.leading = False
        await self.mirror.close()

    async def stop(self) -> None:
        await self.ctl.close()
        await self.mirror.close()
        await self.transport.close()


async def _cluster(etcd, layout, gateways=1, nodes=("n1", "n2")):
    gws = [Gw(etcd, layout, f"gw{i}") for i in range(gateways)]
    links = [etcd_node(etcd, layout, n)[0] for n in nodes]
    tasks = [asyncio.create_task(link.run()) for link in links]
    for g in gws:
        g.start()
    return gws, links, tasks


async def _teardown(gws, links, tasks):
    for t in tasks:
        t.cancel()
    for link in links:
        await link.close()
        await link.client.transport.close()
    for g in gws:
        await g.stop()


async def test_the_directory_is_written_only_by_the_current_leader(etcd, layout):
    (a, b), links, tasks = await _cluster(etcd, layout, gateways=2)
    try:
        await until(lambda: a.ctl.leading or b.ctl.leading, 15, "a leader")
        lead, standby = (a, b) if a.ctl.leading else (b, a)
        await until(lambda: a.routes.ready() and b.routes.ready(), 15, "a full table")
        c, _ = client(etcd)
        before = lead.mirror.kvs[layout.directory]
        # A write with a stale mod revision is refused, even from the leader.
        writes = lead.ctl.writes
        rev = writes.dir_rev
        writes.dir_rev = rev - 1
        assert not await writes.directory(b'{"stale": true}')
        writes.dir_rev = rev
        # The leader loses its key (its lease ran out while it stalled): a standby takes
        # over; the old leader's write, made as if nothing happened, is refused.
        old = lead.ctl.writes  # the old term's writer, as it was
        await c.delete(layout.leader)
        await until(lambda: standby.ctl.leading, 15, "the standby to take over")
        assert not await old.directory(b'{"from": "the old leader"}')
        assert not await old.guarded([Put(layout.release("n1", 99), b"{}")])
        kvs, _ = await c.get(layout.directory)
        after = kvs[0] if kvs else standby.mirror.kvs[layout.directory]
        assert orjson.loads(after.value).get("from") is None
        assert orjson.loads(after.value)["epoch"] >= orjson.loads(before.value)["epoch"]
        # Both gateways route from the same table.
        await until(lambda: a.routes.version() == b.routes.version(), 10, "the same table")
    finally:
        await _teardown([a, b], links, tasks)


async def test_a_standby_takes_over_and_finishes_the_move_in_flight(etcd, layout):
    (a, b), links, tasks = await _cluster(etcd, layout, gateways=2)
    n1 = links[0]
    try:
        await until(lambda: a.ctl.leading or b.ctl.leading, 15, "a leader")
        lead, standby = (a, b) if a.ctl.leading else (b, a)
        await until(lambda: standby.routes.ready(), 15, "a full table")
        slot = standby.routes.table.owners.index("n1")
        # n1 does not answer release orders for now: the move stays in flight.
        hear = n1.agent.received
        n1.agent.received = lambda now, msg: [] if isinstance(msg, cp.Release) else hear(now, msg)
        core = lead.ctl.core
        move_id, effects = core.start_move(0.0, "n1", [Move(("slot", slot), "n1", "n2", 0.0)], "t")
        epoch = core.dir.moves[move_id].epoch
        await lead.ctl._apply(effects)
        await lead.crash()
        took = await until(lambda: standby.ctl.leading, 15, "the standby to take over")
        assert standby.ctl.core.dir.moves.get(move_id) is not None  # loaded from the snapshot
        n1.agent.received = hear  # n1 hears the next release the new leader repeats
        await until(
            lambda: standby.routes.table.holder(("slot", slot)) == ("n2", epoch), 15, "the commit"
        )
        done = [h for h in standby.ctl.core.history.items if h.epoch == epoch]
        assert done and done[0].outcome == "done"
        # The order and its answer are cleaned up.
        c, _ = client(etcd)
        await until(lambda: layout.release("n1", move_id) not in standby.mirror.kvs, 5, "cleanup")
        kvs, _ = await c.get(layout.released("n1", move_id))
        assert not kvs
        print(f"takeover after {took:.2f}s (election lease 2 s)")
    finally:
        await _teardown([a, b], links, tasks)


async def test_a_node_whose_lease_ends_is_gone_and_its_units_spread(etcd, layout):
    (g,), links, tasks = await _cluster(etcd, layout, gateways=1)
    try:
        await until(lambda: g.ctl.leading and g.routes.ready(), 15, "a full table")
        await links[0].close()  # the lease is given back: as if it had run out
        tasks[0].cancel()
        await until(lambda: "n1" not in g.routes.table.owners, 10, "n1's slots to move")
        assert set(g.routes.table.owners) == {"n2"}
        assert g.ctl.status()["nodes"]["n1"]["alive"] is False
    finally:
        await _teardown([g], links, tasks)
