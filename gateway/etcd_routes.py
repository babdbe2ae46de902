"""Routes from etcd: a watched copy of the cluster's keys, and the data plane's view of it.

:class:`EtcdMirror` reads every key under the cluster's prefix, then follows a
watch from the next revision, so every gateway holds the same copy (the
directory snapshot, the nodes, their loads, the leader). A probe reads the
leader key through the same member every second: a member that stops
answering, or that lost its raft quorum (its watch then goes silent without an
error), is left for the next one and the watch resumes from the last revision.

:class:`EtcdRoutes` is the :class:`~gateway.route_source.RouteSource` the data
plane reads: the table from the directory snapshot, node addresses from the
nodes' registrations. When etcd cannot be reached it keeps routing from the
copy it has (the owners it knows are still the owners until a leader can write
a new table, which needs etcd too), and says so: ``stale`` in ``/readyz``,
``/v1/nodes`` and the ``gateway_directory_stale`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import structlog

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.etcd import EtcdClient, EtcdError, Event, KeyValue
from clientlib.kernel.etcd_layout import Layout
from clientlib.kernel.routing import Route, SlotTable
from clientlib.kernel.session_protocol import ProtocolError

__all__ = ["EtcdMirror", "EtcdRoutes", "MirrorListener"]

log = structlog.get_logger("gateway.etcd")


class MirrorListener(Protocol):
    def reset(self) -> None:
        """The copy was read again from scratch (start, or a watch that broke)."""

    def events(self, events: tuple[Event, ...]) -> None:
        """Changes, in revision order, already applied to the copy."""


class EtcdMirror:
    def __init__(
        self,
        client: EtcdClient,
        layout: Layout,
        *,
        probe_s: float = 1.0,
        stale_after_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.layout = layout
        self.probe_s = probe_s
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.kvs: dict[str, KeyValue] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.last_ok = -math.inf  # when etcd last answered
        self.listeners: list[MirrorListener] = []
        self._restart = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._warned = False

    # ------------------------------------------------------------------ views

    @property
    def stale(self) -> bool:
        return self.clock() - self.last_ok > self.stale_after_s

    def age(self) -> float:
        return max(0.0, self.clock() - self.last_ok)

    def under(self, kind: str) -> dict[str, KeyValue]:
        """node → key-value for ``nodes`` or ``load``."""
        root = f"{self.layout.prefix}/{kind}/"
        return {k[len(root) :]: kv for k, kv in self.kvs.items() if k.startswith(root)}

    def leader(self) -> dict[str, Any] | None:
        kv = self.kvs.get(self.layout.leader)
        if kv is None:
            return None
        with contextlib.suppress(orjson.JSONDecodeError):
            obj = orjson.loads(kv.value)
            if isinstance(obj, dict):
                return obj
        return None

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run()), loop.create_task(self._probe())]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def _ok(self) -> None:
        self.last_ok = self.clock()
        if self._warned:
            log.info("etcd_reachable", endpoint=self.client.endpoint)
            self._warned = False

    def _unreachable(self, exc: EtcdError) -> None:
        if not self._warned:
            log.warning(
                "etcd_unreachable",
                error=str(exc)[:200],
                endpoints=self.client.endpoints,
                routing="from the cached table" if self.synced.is_set() else "nothing yet",
            )
            self._warned = True

    async def _run(self) -> None:
        while True:
            watch = asyncio.get_running_loop().create_task(self._sync_and_watch())
            restart = asyncio.get_running_loop().create_task(self._restart.wait())
            try:
                await asyncio.wait([watch, restart], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (watch, restart):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, EtcdError):
                        await t
            self._restart.clear()
            await asyncio.sleep(0.1)

    async def _sync_and_watch(self) -> None:
        root = self.layout.root
        try:
            kvs, rev = await self.client.get(root, prefix=True)
            self.kvs = {kv.key: kv for kv in kvs}
            self.revision = rev
            self._ok()
            self.synced.set()
            for listener in self.listeners:
                listener.reset()
            async for batch in self.client.watch(root, prefix=True, start_revision=rev + 1):
                self._ok()
                if batch.compacted:
                    return  # history is gone: read everything again
                for ev in batch.events:
                    if ev.kind == "put":
                        self.kvs[ev.kv.key] = ev.kv
                    else:
                        self.kvs.pop(ev.kv.key, None)
                    self.revision = max(self.revision, ev.kv.mod_revision)
                if batch.events:
                    for listener in self.listeners:
                        listener.events(batch.events)
        except EtcdError as exc:
            self._unreachable(exc)
            self.client.next_endpoint()

    async def _probe(self) -> None:
        """A quorum read through the watch's member; two misses: watch elsewhere."""
        misses = 0
        while True:
            await asyncio.sleep(self.probe_s)
            endpoint = self.client.endpoint
            try:
                await self.client.probe(self.layout.leader, self.probe_s)
                misses = 0
                self._ok()
                if self.client.endpoint != endpoint:
                    self._restart.set()  # the probe went elsewhere: so does the watch
            except EtcdError as exc:
                misses += 1
                self._unreachable(exc)
                if misses >= 2:
                    misses = 0
                    self._restart.set()


class EtcdRoutes:
    """The data plane's :class:`~gateway.route_source.RouteSource` over an :class:`EtcdMirror`."""

    def __init__(self, mirror: EtcdMirror, *, lease_s: float = 3.0):
        self.mirror = mirror
        self.layout = mirror.layout
        self.lease_s = lease_s
        self.table = SlotTable.empty()
        self.epoch = 0
        self.addrs: dict[str, tuple[str, int]] = {}  # registered nodes
        self.known: dict[str, tuple[str, int]] = {}  # every address seen (the table may lag)
        self.capacity: dict[str, float] = {}
        mirror.listeners.append(self)

    # ------------------------------------------------------------------ MirrorListener

    def reset(self) -> None:
        self.addrs.clear()
        kv = self.mirror.kvs.get(self.layout.directory)
        if kv is not None:
            self._directory(kv)
        for node_kv in self.mirror.under("nodes").values():
            self._node(node_kv)

    def events(self, events: tuple[Event, ...]) -> None:
        for ev in events:
            kind, node, _ = self.layout.parse(ev.kv.key)
            if kind == "directory" and ev.kind == "put":
                self._directory(ev.kv)
            elif kind == "nodes" and ev.kind == "put":
                self._node(ev.kv)
            elif kind == "nodes":
                self.addrs.pop(node, None)

    def _directory(self, kv: KeyValue) -> None:
        try:
            obj = orjson.loads(kv.value)
            table = SlotTable.from_json(obj["table"])
            for n in obj.get("nodes", []):
                self.known[str(n["id"])] = (str(n["host"]), int(n["port"]))
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.error("directory_unreadable", error=str(exc)[:200])
            return
        self.table = table
        self.epoch = int(obj.get("epoch", 0))

    def _node(self, kv: KeyValue) -> None:
        try:
            msg = cp.decode(kv.value)
        except ProtocolError as exc:
            log.error("node_record_refused", key=kv.key, error=str(exc))
            return
        if isinstance(msg, cp.Register):
            self.addrs[msg.node] = self.known[msg.node] = msg.addr
            self.capacity[msg.node] = msg.capacity

    # ------------------------------------------------------------------ RouteSource

    def route(self, key: str) -> Route | None:
        return self.table.route(key)

    def address(self, node: str) -> tuple[str, int] | None:
        # A node whose registration is gone keeps its address until the table moves its
        # units: dialing it fails, and the client is told when to come back.
        return self.addrs.get(node) or self.known.get(node)

    def fallback(self, key: str, exclude: set[str]) -> str | None:
        return None  # the owner is authoritative

    def retry_after(self, node: str) -> int | None:
        # Registered: its lease must run out first; gone: the leader reassigns at once.
        return math.ceil(self.lease_s + 1) if node in self.addrs else 1

    def version(self) -> int:
        return self.table.version

    def ready(self) -> bool:
        return self.mirror.synced.is_set() and bool(self.addrs) and None not in self.table.owners

    def view(self) -> dict[str, Any]:
        counts: dict[str | None, int] = {}
        for o in self.table.owners:
            counts[o] = counts.get(o, 0) + 1
        loads = self.mirror.under("load")
        nodes = []
        for node in sorted(set(self.addrs) | {o for o in counts if o}):
            load: dict[str, Any] = {}
            kv = loads.get(node)
            if kv is not None:
                with contextlib.suppress(ProtocolError):
                    msg = cp.decode(kv.value)
                    if isinstance(msg, cp.Report):
                        load = msg.load.to_json()
            addr = self.address(node)
            nodes.append(
                {
                    "id": node,
                    "address": f"{addr[0]}:{addr[1]}" if addr else None,
                    "alive": node in self.addrs,
                    "capacity": self.capacity.get(node),
                    "slots": counts.get(node, 0),
                    "load": load,
                }
            )
        return {
            "mode": "etcd",
            "epoch": self.epoch,
            "stale": self.mirror.stale,
            "etcd_age_s": round(min(self.mirror.age(), 1e9), 2),
            "leader": self.mirror.leader(),
            "nodes": nodes,
        }
