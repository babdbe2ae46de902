"""The control plane on etcd: one elected gateway runs :class:`ControlCore`, durably by CAS.

Every gateway runs an :class:`EtcdController`; the one that creates the leader
key (under its own etcd lease, ``election_lease_s``) runs the core until it
loses it, the others stand by and take over when the key goes.

**Durable before announced.** The core saves through a ``StagedStorage``; the
snapshot is written by CAS (:class:`~gateway.controlplane.etcd_effects.LeaderWrites`)
before the effects the core returned are carried out. A refused write: the effects
are dropped and this gateway steps down. The epoch counter and the moves in flight
are in the snapshot, so a new leader hands out epochs above every one announced
and finishes or aborts the moves.

**Feeding the core** from the watched keys, in revision order: a node's
registration key (put: ``register``; deleted, i.e. its lease ran out or it
revoked it: the node is gone at once), its load key (``report``), its answers
(``released``, ``leave``). Effects become keys (:mod:`gateway.controlplane.etcd_effects`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from prometheus_client import Gauge

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.etcd import (
    Compare,
    EtcdClient,
    EtcdError,
    Event,
    KeyValue,
    Put,
)
from clientlib.kernel.session_protocol import ProtocolError
from gateway.controlplane.controller import Controller
from gateway.controlplane.core import (
    ControlCore,
    CoreConfig,
    Effect,
    Send,
)
from gateway.controlplane.directory import EmbeddedDirectory
from gateway.controlplane.endpoint import ControlEndpoint
from gateway.controlplane.etcd_effects import LeaderWrites, StagedStorage, effect_ops
from gateway.controlplane.etcd_standby import StandbyAdmission, standby_status, watched_loads
from gateway.controlplane.planner import PlannerConfig
from gateway.etcd_routes import EtcdMirror
from gateway.metrics import GatewayMetrics

__all__ = ["EtcdController", "StagedStorage"]

log = structlog.get_logger("gateway.control")

MAX_INBOX = 10_000


class _EtcdOnly:
    """``/v1/control`` on a gateway whose directory is etcd: tell a backend so."""

    async def registered(self, msg: cp.Register) -> str | None:
        return "this cluster's directory is in etcd: start the backend with --etcd"

    async def received(self, node: str, msg: cp.Report | cp.Released | cp.Leave) -> None:
        return None


class EtcdController(Controller):
    def __init__(
        self,
        client: EtcdClient,
        mirror: EtcdMirror,
        secret: str,
        metrics: GatewayMetrics,
        *,
        gateway_id: str,
        admin: str,
        election_lease_s: int = 2,
        node_lease_s: float = 3.0,
        config: CoreConfig | None = None,
        planner: PlannerConfig | None = None,
        tick_s: float = 0.5,
        routes_ready: Callable[[], bool] = lambda: False,
    ):
        self.storage = StagedStorage()
        super().__init__(
            EmbeddedDirectory(self.storage, lease_s=node_lease_s),
            secret,
            metrics,
            config=config,
            planner=planner,
            tick_s=tick_s,
        )
        self.endpoint = ControlEndpoint(secret, _EtcdOnly())
        self.client, self.mirror, self.layout = client, mirror, mirror.layout
        self.me = orjson.dumps({"id": gateway_id, "admin": admin})
        self.gateway_id = gateway_id
        self.election_lease_s = election_lease_s
        self.leading = False
        self.terms = 0
        self._core_cfg = (config, planner)
        self.routes_ready = routes_ready
        self._lease = 0
        self._leader_rev = 0  # create revision of this term's leader key
        self.writes = LeaderWrites(client, self.layout, 0, 0)
        self._base_rev = 0  # events at or below it were in the term's first read
        self._inbox: list[Event] = []
        self._resync = False
        self._starting = False  # a term is reading its first copy: keep the events
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._orders: dict[int, str] = {}  # move → the node its release was put for
        self._admission = StandbyAdmission(self.core.planner_cfg)  # a standby's own view
        mirror.listeners.append(self)
        r = metrics.registry
        self.g_leader = Gauge("gateway_control_leader", "1 while this gateway leads", registry=r)
        self.g_stale = Gauge(
            "gateway_directory_stale", "1 while etcd cannot be reached (cached table)", registry=r
        )

    # ------------------------------------------------------------------ MirrorListener

    def reset(self) -> None:
        if self.leading:
            self._resync = True  # events may have been missed: compare with the new copy
        self._wake.set()

    def events(self, events: tuple[Event, ...]) -> None:
        if self.leading or self._starting:  # (a new term drops what its first read saw)
            if len(self._inbox) + len(events) > MAX_INBOX:
                self._lost.set()
            else:
                self._inbox.extend(events)
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._step_down()  # a graceful stop hands over at once
        await self.endpoint.close()

    # ------------------------------------------------------------------ election

    async def _loop(self) -> None:
        while True:
            self.g_stale.set(1 if self.mirror.stale else 0)
            self._standby_admission()
            try:
                vacant = self.layout.leader not in self.mirror.kvs
                if self.mirror.synced.is_set() and vacant and await self._campaign():
                    await self._lead()
            except EtcdError as exc:
                log.warning("control_etcd_error", error=str(exc)[:200])
            except Exception:
                log.exception("control_term_failed")
            finally:
                await self._step_down()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # (wait_for can swallow a cancellation)
                    await self._wake.wait()

    async def _campaign(self) -> bool:
        lease = await self.client.grant(self.election_lease_s)
        key = self.layout.leader
        res = await self.client.txn([Compare(key, "CREATE", 0)], [Put(key, self.me, lease)])
        if not res.succeeded:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(lease)
            return False
        self._lease, self._leader_rev = lease, res.revision
        return True

    async def _keep_leading(self) -> None:
        """Renew the election lease; returns when it is lost, or cannot be renewed before
        it would run out (counted from each keep-alive's send, minus a margin)."""
        ttl = self.election_lease_s
        until = time.monotonic() + ttl * 0.8
        while time.monotonic() < until:
            sent = time.monotonic()
            try:
                got = await self.client.keepalive(self._lease, timeout=max(until - sent, 0.1))
                if got <= 0:
                    return
                until = sent + got * 0.8
            except EtcdError:
                pass
            await asyncio.sleep(ttl / 4)

    async def _lead(self) -> None:
        self.terms += 1
        self._lost.clear()
        self._inbox.clear()
        self._starting = True
        keeper = asyncio.get_running_loop().create_task(self._keep_leading())
        try:
            kvs, rev = await self.client.get(self.layout.root, prefix=True)
            self._starting = False
            self._start_term({kv.key: kv for kv in kvs}, rev)
            self.leading = True  # events after ``rev`` now go to this term's core
            self.g_leader.set(1)
            log.info("control_leading", gateway=self.gateway_id, term=self.terms, revision=rev)
            await self._apply(self._reconcile({kv.key: kv for kv in kvs}))
            next_tick = time.monotonic()
            while not keeper.done() and not self._lost.is_set():
                if self._resync:
                    self._resync, self._inbox = False, []
                    self._base_rev = self.mirror.revision
                    await self._apply(self._reconcile(dict(self.mirror.kvs)))
                await self._drain_inbox()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.tick_s
                    self._renew_present()
                    await self._apply(self.core.tick(now))
                    self.metrics.admission_closed.set(1 if self.core.shed else 0)
                    self.g_stale.set(1 if self.mirror.stale else 0)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(next_tick - now, 0.01)):
                        await self._wake.wait()
        finally:
            self._starting = False
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    def _start_term(self, kvs: dict[str, KeyValue], rev: int) -> None:
        kv = kvs.get(self.layout.directory)
        self.storage = StagedStorage(kv.value if kv else None)
        self.writes = LeaderWrites(
            self.client, self.layout, self._leader_rev, kv.mod_revision if kv else 0
        )
        self._base_rev = rev
        paused = self.core.paused
        self.dir = EmbeddedDirectory(self.storage, lease_s=self.dir.lease_s)
        cfg, planner = self._core_cfg
        self.core = ControlCore(self.dir, cfg, planner, wall=time.time)
        self.core.paused = paused
        present = {self.layout.parse(k)[1] for k in kvs if self.layout.parse(k)[0] == "nodes"}
        for node, entry in self.dir.nodes.items():
            if node not in present:
                entry.lease_until = -math.inf  # known to the snapshot, no longer registered

    async def _step_down(self) -> None:
        was, self.leading = self.leading, False
        self.g_leader.set(0)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ValueError("this gateway stopped leading the control plane"))
        self._waiters.clear()
        if self._lease:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(self._lease)  # let a standby take over at once
            self._lease = 0
        if was:
            log.warning("control_stepped_down", gateway=self.gateway_id, term=self.terms)

    # ------------------------------------------------------------------ feeding the core

    def _reconcile(self, kvs: dict[str, KeyValue]) -> list[Effect]:
        """A new term, or a copy read again: a member whose key is gone is gone; every
        registered node, its load and its answers count as if they had just come."""
        order = {"nodes": 0, "load": 1, "answers": 2}
        items = [(self.layout.parse(k), kv) for k, kv in kvs.items()]
        present = {node for (kind, node, _), _ in items if kind == "nodes"}
        out: list[Effect] = []
        for node, e in list(self.dir.nodes.items()):
            if e.alive and node not in present:
                out += self._event(Event("delete", KeyValue(self.layout.node(node), b"")))
        items = sorted((p for p in items if p[0][0] in order), key=lambda p: order[p[0][0]])
        for (kind, node, _), kv in items:
            known = self.dir.nodes.get(node)
            if kind == "nodes" and known is not None and known.alive and known.registered:
                if known.incarnation == self._incarnation(kv):
                    continue  # known, and the same process: nothing to tell the core
                out += self._event(Event("delete", kv))  # another process: the old one is gone
            out += self._event(Event("put", kv))
        return out

    @staticmethod
    def _incarnation(kv: KeyValue) -> str:
        try:
            msg = cp.decode(kv.value)
        except ProtocolError:
            return ""
        return msg.incarnation if isinstance(msg, cp.Register) else ""

    async def _drain_inbox(self) -> None:
        while self._inbox and self.leading and not self._lost.is_set():
            batch, self._inbox = self._inbox, []
            out: list[Effect] = []
            for ev in batch:
                if ev.kv.mod_revision > self._base_rev:
                    out += self._event(ev)
            await self._apply(out)

    def _event(self, ev: Event) -> list[Effect]:
        kind, node, _ = self.layout.parse(ev.kv.key)
        now, d = time.monotonic(), self.dir
        if kind == "leader" and ev.kind == "delete":
            self._lost.set()
            return []
        if kind == "directory":
            return []  # ours; a write by anyone else fails our next CAS, and we step down
        if kind == "nodes" and ev.kind == "delete":
            e = d.nodes.get(node)
            if e is None or not e.alive:
                return []
            e.lease_until = -math.inf  # its etcd lease ran out (or it gave it back): gone now
            return self.core.tick(now)
        if ev.kind != "put" or kind not in ("nodes", "load", "answers"):
            return []
        try:
            msg = cp.decode(ev.kv.value)
        except ProtocolError as exc:
            log.warning("control_message_refused", key=ev.kv.key, error=str(exc))
            return []
        if kind == "nodes" and isinstance(msg, cp.Register) and msg.node == node:
            accepted, effects = self.core.register(now, msg)
            return effects if accepted else [Send(node, cp.Refused(self.core.refusal(msg)))]
        e = d.nodes.get(node)
        if e is None or not e.alive or e.leaving:
            return []  # not (or no longer) a member: nothing it says counts
        if (kind, isinstance(msg, cp.Report)) == ("load", True) or (
            kind == "answers" and isinstance(msg, cp.Released | cp.Leave)
        ):
            assert isinstance(msg, cp.Report | cp.Released | cp.Leave)
            return self.core.received(now, node, msg)
        return []

    def _renew_present(self) -> None:
        """A node is alive while its registration key is: etcd keeps its lease."""
        for node in self.mirror.under("nodes"):
            self.dir.renew(node)

    # ------------------------------------------------------------------ effects

    async def _apply(self, effects: list[Effect]) -> None:
        async with self._lock:
            if not self.leading or self._lost.is_set():
                return
            staged = self.storage.take()
            if staged is not None and not await self.writes.directory(staged):
                self._lost.set()
                return
            ops, finished = effect_ops(effects, self.layout, self._orders)
            for done in finished:
                fut = self._waiters.pop(done.move, None)
                if fut is not None and not fut.done():
                    fut.set_result(done)
            if ops and not await self.writes.guarded(ops):
                self._lost.set()

    # ------------------------------------------------------------------ admin

    def ready(self) -> bool:
        return self.routes_ready()

    def stale_note(self) -> str:
        if not self.mirror.stale:
            return ""
        return (
            f"stale: etcd unreachable for {self.mirror.age():.0f}s; routing from the cached table"
        )

    async def manual_move(self, unit: Any, to: str, *, pin: bool = False) -> int:
        self._must_lead()
        return await super().manual_move(unit, to, pin=pin)

    async def drain_node(self, node: str) -> int:
        self._must_lead()
        return await super().drain_node(node)

    def _must_lead(self) -> None:
        if not self.leading:
            raise ValueError(f"not the leader; the leader is {self.mirror.leader()}")

    def admission(self) -> int | None:
        """Retry-After while the fleet sheds: the leader's planner decides for the leader;
        a standby applies the same rule to the loads it watches."""
        if self.leading:
            return super().admission()
        return 2 if self._admission.shedding else None

    def _standby_admission(self) -> None:
        if not self.leading:
            shed = self._admission.update(watched_loads(self.mirror.under("load")))
            self.metrics.admission_closed.set(1 if shed else 0)

    def status(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "directory": "etcd",
            "gateway_id": self.gateway_id,
            "leading": self.leading,
            "leader": self.mirror.leader(),
            "stale": self.mirror.stale,
            "terms": self.terms,
        }
        if self.leading:
            return {**self.core.status(), **base}
        return {**standby_status(self.mirror.under("load")), **base}
