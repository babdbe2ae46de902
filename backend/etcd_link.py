"""The node's control session over etcd: an asyncio shell around :class:`ControlAgent`.

With ``--etcd`` a backend talks to no gateway: it finds the control plane's
decisions in etcd and leaves its own messages there (keys:
:mod:`clientlib.kernel.etcd_layout`). The agent is the same one the WebSocket
session drives; only the transport differs.

- **Registration** is one transaction: create ``nodes/<id>`` (the ``register``
  message) with this process's own etcd lease, only if the key is absent, or
  held by this same incarnation. Otherwise another process holds the id: the
  agent is told ``refused`` and the node tries again every second.
- **The lease.** Every report interval the etcd lease is kept alive and the
  load report put under it. A keep-alive that succeeds is handed to the agent
  as ``granted(seq, ttl)`` for the report that was due when it was *sent*; the
  agent's lease then ends ``ttl * (1 - margin)`` after the send. etcd counts its
  side from when it received the keep-alive, and the plane learns of the expiry
  only after etcd deleted the key, so the node always stops serving first. A
  node cut off from etcd stops serving when its own lease ends
  (``node.lease_lost()``, from the agent's tick).
- **The table** comes from a watch on the directory key; **orders** (release,
  left, refused) from a watch on ``orders/<id>/``; answers go to ``answers/<id>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import orjson
import structlog

from backend.control_agent import ControlAgent
from clientlib.kernel import control_protocol as cp
from clientlib.kernel.etcd import Compare, EtcdClient, EtcdError, KeyValue, Put, Range
from clientlib.kernel.etcd_layout import Layout
from clientlib.kernel.routing import SlotTable
from clientlib.kernel.session_protocol import ProtocolError

__all__ = ["EtcdLink"]

log = structlog.get_logger("backend.etcd")

TICK_S = 0.1
RETRY_S = 1.0


class EtcdLink:
    def __init__(
        self,
        agent: ControlAgent,
        client: EtcdClient,
        layout: Layout,
        *,
        lease_s: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.agent = agent
        self.client = client
        self.layout = layout
        self.lease_s = lease_s
        self.clock = clock
        self.node_id = agent.node.node_id
        self.lease = 0  # the etcd lease this registration holds (0: none)
        self.registered = asyncio.Event()
        self._left = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._renewals: set[asyncio.Task[None]] = set()
        self._load_put: asyncio.Task[None] | None = None
        self._warned = False
        self._registered_at = 0  # the etcd revision of this registration

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch(self.layout.directory, False, self._on_directory)),
            loop.create_task(self._watch(self.layout.orders(self.node_id), True, self._on_order)),
        ]
        try:
            await self._lease_loop()
        finally:
            for t in self._tasks:
                t.cancel()

    async def leave(self, timeout: float = 5.0) -> bool:
        """Ask the plane to reassign everything here; True once it confirmed (``left``)."""
        if not self.lease:
            return False
        msgs = self.agent.leave()
        try:
            await self.client.delete(self.layout.left(self.node_id))
            for m in msgs:
                await self.client.put(
                    self.layout.leave(self.node_id), cp.encode(m), lease=self.lease
                )
            async with asyncio.timeout(timeout):
                await self._left.wait()
            return True
        except (EtcdError, TimeoutError):
            return False

    async def close(self) -> None:
        """Give the lease back: the node's keys go at once, so a restart registers at once."""
        if self.lease:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self.lease)
            self.lease = 0

    # ------------------------------------------------------------------ the lease

    async def _lease_loop(self) -> None:
        agent = self.agent
        while True:
            if not self.lease:
                try:
                    if not await self._register():
                        await asyncio.sleep(RETRY_S)
                        continue
                except EtcdError as exc:
                    self._unreachable(exc)
                    agent.tick(self.clock())  # the lease check goes on without etcd
                    await asyncio.sleep(RETRY_S)
                    continue
            for m in agent.tick(self.clock()):
                # Each report's keep-alive goes out when it is due, even if the last one has
                # not come back (a slow member must not cost the lease); at most a few at once.
                self._renewals = {t for t in self._renewals if not t.done()}
                if isinstance(m, cp.Report) and len(self._renewals) < 4:
                    self._renewals.add(asyncio.get_running_loop().create_task(self._renew(m)))
            await asyncio.sleep(TICK_S)

    async def _register(self) -> bool:
        agent, key = self.agent, self.layout.node(self.node_id)
        now = self.clock()
        (reg,) = agent.connected(now)  # its send time is the lease's start
        lease = await self.client.grant(self.lease_s)
        value = cp.encode(reg)
        res = await self.client.txn(
            [Compare(key, "CREATE", 0)], [Put(key, value, lease)], [Range(key)]
        )
        if not res.succeeded and res.ranges and res.ranges[0]:
            held = res.ranges[0][0]
            if self._incarnation(held) == agent.incarnation:
                # Our own key under a lease we lost track of: take it over, unless it changed.
                res = await self.client.txn(
                    [Compare(key, "MOD", held.mod_revision)], [Put(key, value, lease)]
                )
        if not res.succeeded:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(lease)
            holder = self._incarnation(res.ranges[0][0]) if res.ranges and res.ranges[0] else "?"
            agent.received(
                self.clock(),
                cp.Refused(
                    f"node id {self.node_id!r} is held by incarnation {holder}; "
                    "retrying every second (two backends with one --node-id?)"
                ),
            )
            return False
        self.lease = lease
        self._registered_at = res.revision
        agent.received(self.clock(), cp.Granted(0, self.lease_s * 1000))
        self.registered.set()
        self._warned = False
        log.info("etcd_registered", node=self.node_id, lease=lease, incarnation=agent.incarnation)
        return True

    async def _renew(self, report: cp.Report) -> None:
        """Keep the lease alive (the report's seq was stamped when it was due: now), then
        put the load report under it."""
        lease = self.lease
        try:
            ttl = await self.client.keepalive(lease, timeout=self.lease_s / 2)
            if ttl <= 0:
                log.warning("etcd_lease_expired", node=self.node_id, lease=lease)
                if self.lease == lease:
                    self.lease = 0
                    self.registered.clear()
                return
            self.agent.received(self.clock(), cp.Granted(report.seq, ttl * 1000))
        except EtcdError as exc:
            self._unreachable(exc)
            return
        if self._load_put is None or self._load_put.done():  # the load waits for nothing
            self._load_put = asyncio.get_running_loop().create_task(self._put_load(report, lease))

    async def _put_load(self, report: cp.Report, lease: int) -> None:
        try:
            await self.client.put(self.layout.load(self.node_id), cp.encode(report), lease=lease)
        except EtcdError as exc:
            self._unreachable(exc)

    def _unreachable(self, exc: EtcdError) -> None:
        if not self._warned:
            log.warning(
                "etcd_unreachable", node=self.node_id, error=str(exc)[:200], retry_s=RETRY_S
            )
            self._warned = True

    @staticmethod
    def _incarnation(kv: KeyValue) -> str:
        try:
            msg = cp.decode(kv.value)
        except ProtocolError:
            return "?"
        return msg.incarnation if isinstance(msg, cp.Register) else "?"

    # ------------------------------------------------------------------ watches

    async def _watch(
        self, key: str, prefix: bool, handle: Callable[[KeyValue], Awaitable[None]]
    ) -> None:
        """Read the key(s), then follow them; a broken watch reads again and goes on."""
        while True:
            try:
                kvs, rev = await self.client.get(key, prefix=prefix)
                for kv in kvs:
                    await handle(kv)
                async for batch in self.client.watch(key, prefix=prefix, start_revision=rev + 1):
                    if batch.compacted:
                        break
                    for ev in batch.events:
                        if ev.kind == "put":
                            await handle(ev.kv)
            except EtcdError as exc:
                self._unreachable(exc)
                self.client.next_endpoint()
            await asyncio.sleep(0.2)

    async def _on_directory(self, kv: KeyValue) -> None:
        try:
            table = SlotTable.from_json(orjson.loads(kv.value)["table"])
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.error("directory_unreadable", error=str(exc)[:200])
            return
        self.agent.received(self.clock(), cp.TableUpdate(table))

    async def _on_order(self, kv: KeyValue) -> None:
        try:
            msg = cp.decode(kv.value)
        except ProtocolError as exc:
            log.error("control_message_refused", key=kv.key, error=str(exc))
            return
        stale = kv.mod_revision < self._registered_at
        if isinstance(msg, cp.Left | cp.Refused) and (stale or not self.lease):
            return  # said to an earlier registration
        if isinstance(msg, cp.Left) and not self.agent.leaving:
            return
        for answer in self.agent.received(self.clock(), msg):
            if isinstance(answer, cp.Released) and self.lease:
                with contextlib.suppress(EtcdError):
                    await self.client.put(
                        self.layout.released(self.node_id, answer.move),
                        cp.encode(answer),
                        lease=self.lease,
                    )
        if isinstance(msg, cp.Left):
            self._left.set()
        elif isinstance(msg, cp.Refused) and self.lease:
            # The plane will not take this registration: give it up, register again later.
            with contextlib.suppress(EtcdError):
                await self.client.delete(kv.key)
                await self.client.revoke(self.lease)
            self.lease = 0
            self.registered.clear()
