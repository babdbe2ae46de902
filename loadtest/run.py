"""``loadtest run``: start (or target) a topology, drive the scenario, verify, report."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from backend.journal import current
from clientlib.kernel.routing import slot_of
from loadtest.cluster import ClusterTopology, Hosts
from loadtest.model import ClientSpec, Hotspot, build_clients, capacity_for
from loadtest.scenario import Scenario
from loadtest.stats import summarize
from loadtest.topology import Topology
from loadtest.worker import WorkerJob, worker_main


@dataclass
class Target:
    """An existing gateway to drive instead of a local topology."""

    url: str
    admin_url: str | None = None
    admin_token: str | None = None
    token: str | None = None


@dataclass
class RunData:
    scenario: Scenario
    t0: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)  # admin status every 0.5 s
    progress: list[dict[str, Any]] = field(default_factory=list)  # worker intervals
    finals: list[dict[str, Any]] = field(default_factory=list)
    final_counts: dict[str, int] | None = None
    hot_keys: list[str] = field(default_factory=list)
    hot_node: str | None = None
    capacity: dict[str, float] = field(default_factory=dict)  # node → messages/s (configured)
    killed: str | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    moves: list[dict[str, Any]] = field(default_factory=list)  # the gateway's move history


def pick_keys(
    owners: list[str | None] | None, count: int, prefix: str, node: str | None
) -> list[str]:
    """``count`` keys that all hash to slots owned by ``node`` (any node if no table)."""
    keys: list[str] = []
    i = 0
    while len(keys) < count and i < 1_000_000:
        k = f"{prefix}{i}"
        i += 1
        if owners is None or node is None or owners[slot_of(k, len(owners))] == node:
            keys.append(k)
    return keys


def read_counts(store: Path | str) -> dict[str, int]:
    """Ground truth: each key's final counter, from the backends' shared state store
    (an SQLite file, or Redis)."""
    if isinstance(store, str) and store.startswith(("redis://", "rediss://")):
        from backend.redis_store import RedisStore

        rs = RedisStore(store)
        try:
            return rs.counts()
        finally:
            rs.close()
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        out: dict[str, int] = {}
        journals: dict[str, list[bytes]] = {}
        has_journal = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='journal'"
        ).fetchone()
        if has_journal:  # write-through's entries since each record
            for key, entry in db.execute("SELECT key, entry FROM journal ORDER BY key, seq"):
                journals.setdefault(key, []).append(bytes(entry))
        for key, blob in db.execute("SELECT key, blob FROM keystate"):
            state = current(blob, journals.get(key, ())).get("state") or {}
            if isinstance(state, dict) and "count" in state:
                out[key] = int(state["count"])
        return out
    finally:
        db.close()


class Runner:
    def __init__(
        self,
        sc: Scenario,
        out: Path,
        target: Target | None = None,
        quiet: bool = False,
        cluster: Hosts | None = None,
    ):
        self.sc = sc
        self.cluster = cluster  # the hosts of a cluster topology (etcd, gateways, Redis)
        self.out = out
        self.target = target
        self.quiet = quiet
        self.data = RunData(sc)
        self.topo: Topology | ClusterTopology | None = None

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    async def run(self) -> RunData:
        sc = self.sc
        self.out.mkdir(parents=True, exist_ok=True)
        total = sc.clients * sc.rate
        service = sc.service_times()
        cap: float | None = None
        if service:
            # Finite capacity: each backend's server sets it; the nodes estimate it.
            self.data.capacity = {n: round(1e6 / us, 1) for n, us in service.items()}
            caps = "capacity " + ", ".join(f"{v:.0f}" for v in self.data.capacity.values())
            caps += " msg/s (service queues)"
        else:
            cap = sc.capacity or capacity_for(total, sc.backends, sc.hotspot_share)
            self.data.capacity = {f"node-{i}": round(cap, 1) for i in range(1, sc.backends + 1)}
            caps = f"capacity {cap:.0f} msg/s each"
        if self.target is None and self.cluster is not None:
            self.topo = ClusterTopology(
                self.out / "topology",
                self.cluster,
                backends=sc.backends,
                capacity=cap,
                service_times=service,
                durability=sc.durability,
                rebalance=sc.rebalance,
            )
            how = "network namespaces" if self.cluster.netns else "loopback addresses"
            self.say(
                f"starting a cluster on {how}: 3 etcd members, 3 gateways, {sc.backends} "
                f"backends, Redis ({caps}, durability "
                f"{sc.durability}); logs in {self.topo.workdir}"
            )
            await self.topo.start()
        elif self.target is None:
            self.topo = Topology(
                self.out / "topology",
                backends=sc.backends,
                capacity=cap,
                service_times=service,
                rebalance_tolerance=sc.rebalance_tolerance,
                durability=sc.durability,
                rebalance=sc.rebalance,
            )
            self.say(
                f"starting gateway and {sc.backends} backends ({caps}, durability "
                f"{sc.durability}, rebalance {'on' if sc.rebalance else 'off'}); "
                f"logs in {self.topo.workdir}"
            )
            await self.topo.start()
        try:
            return await self._drive()
        finally:
            if self.topo is not None:
                self.say("stopping the topology (backends flush their state)")
                loop = asyncio.get_running_loop()
                if isinstance(self.topo, ClusterTopology):
                    await loop.run_in_executor(None, self.topo.stop_processes)
                    try:
                        self.data.final_counts = read_counts(self.topo.store)
                    finally:
                        self.topo.stop_services()
                else:
                    await loop.run_in_executor(None, self.topo.stop)
                    self.data.final_counts = read_counts(self.topo.store)

    async def _admin(self, s: aiohttp.ClientSession, path: str) -> dict[str, Any] | None:
        if self.topo is not None:
            return await self.topo.admin_get(s, path)
        if self.target is None or self.target.admin_url is None:
            return None
        headers = (
            {"Authorization": f"Bearer {self.target.admin_token}"}
            if self.target.admin_token
            else {}
        )
        async with s.get(self.target.admin_url + path, headers=headers) as r:
            r.raise_for_status()
            out: dict[str, Any] = orjson.loads(await r.read())
            return out

    async def _drive(self) -> RunData:
        sc, d = self.sc, self.data
        async with aiohttp.ClientSession() as s:
            table = await self._admin(s, "/v1/table?full=1")
            owners = table["owners"] if table else None
            if owners and sc.hotspot_same_node:
                d.hot_node = max(set(o for o in owners if o), key=str)
            run_id = f"{int(time.time()) % 100000}"
            cold = [f"r{run_id}:k{i}" for i in range(sc.keys)]
            d.hot_keys = pick_keys(owners, sc.hotspot_keys, f"r{run_id}:hot", d.hot_node)
            hotspot = (
                Hotspot(sc.hotspot_at, sc.hotspot_duration, sc.hotspot_share, sc.hotspot_keys)
                if sc.hotspot_at is not None
                else None
            )
            specs = build_clients(
                clients=sc.clients,
                keys=cold,
                hot_keys=d.hot_keys,
                zipf=sc.zipf,
                rate=sc.rate,
                hotspot=hotspot,
                ramp_per_s=sc.ramp_per_s,
                seed=sc.seed,
                quiet=sc.hotspot_quiet,
            )
            if sc.flash_at is not None and sc.flash_clients:
                flash_key = f"r{run_id}:flash"
                specs += [
                    ClientSpec(
                        len(specs) + i,
                        flash_key,
                        False,
                        sc.flash_at + i / sc.ramp_per_s,
                        sc.rate,
                        sc.rate,
                        sc.rate,
                    )
                    for i in range(sc.flash_clients)
                ]
            d.t0 = time.time() + 1.0
            url: str | list[str] = (
                self.topo.urls
                if isinstance(self.topo, ClusterTopology)
                else self.topo.url
                if self.topo
                else self.target.url  # type: ignore[union-attr]
            )
            token = self.target.token if self.target else None
            ctx = multiprocessing.get_context("spawn")
            q: multiprocessing.Queue[Any] = ctx.Queue()
            procs = []
            for w in range(sc.workers):
                job = WorkerJob(
                    w,
                    url,
                    specs[w :: sc.workers],
                    d.t0,
                    sc.duration,
                    hotspot,
                    sc.message_bytes,
                    sc.drain_s,
                    sc.seed + w,
                    token,
                )
                p = ctx.Process(target=worker_main, args=(job, q), daemon=True)
                p.start()
                procs.append(p)
            self.say(
                f"{len(specs)} clients over {sc.workers} workers, {sc.rate} msg/s each, "
                f"for {sc.duration:.0f}s; hot keys {d.hot_keys} on {d.hot_node}"
            )
            observer = asyncio.create_task(self._observe(s))
            try:
                await self._collect(q, procs)
                moves = await self._admin(s, "/v1/moves")
                d.moves = moves["moves"] if moves else []
            finally:
                observer.cancel()
                for p in procs:
                    p.join(5)
                    if p.is_alive():
                        p.kill()
        return d

    async def _observe(self, s: aiohttp.ClientSession) -> None:
        sc, d = self.sc, self.data
        killed = False
        last_line = 0.0
        while True:
            t = time.time() - d.t0
            try:
                st = await self._admin(s, "/v1/status")
            except (aiohttp.ClientError, OSError):
                st = None
            if st is not None:
                st["t"] = t
                d.samples.append(st)
            if sc.kill_at is not None and not killed and t >= sc.kill_at and self.topo:
                victim = d.hot_node or next(iter(self.topo.nodes))
                self.topo.kill(victim, signal.SIGKILL)
                d.killed = victim
                d.events.append((t, f"kill -9 {victim}"))
                killed = True
                self.say(f"\nt={t:.1f}s: killed {victim} with SIGKILL")
            if t - last_line >= 1.0 and t > 0:
                last_line = t
                self._progress_line(t, st)
            await asyncio.sleep(0.5)

    def _progress_line(self, t: float, st: dict[str, Any] | None) -> None:
        prog = self._latest_progress()
        recent = summarize([p for p in self.data.progress if p["t"] > t - 2.0])
        imb = st.get("imbalance") if st else None
        line = (
            f"t={t:5.1f}s clients {prog['connected']:5d} "
            f"msgs/s {recent['rate']:7.0f} p99 {recent['p99_ms']:7.1f}ms "
            f"imbalance {imb if imb is not None else '-':>6} "
            f"moves {st.get('moves', '-') if st else '-':>3} "
            f"reconnects {prog['reconnects']:5d} "
            f"shed {'yes' if st and st.get('shedding') else 'no'}"
        )
        if self.quiet:
            return
        end = "\r" if sys.stderr.isatty() else "\n"
        print(line, end=end, file=sys.stderr, flush=True)

    def _latest_progress(self) -> dict[str, int]:
        latest: dict[int, dict[str, Any]] = {}
        for p in self.data.progress:
            latest[p["worker"]] = p
        return {
            k: sum(int(p[k]) for p in latest.values())
            for k in ("connected", "sent", "received", "reconnects")
        }

    async def _collect(
        self, q: multiprocessing.Queue[Any], procs: Sequence[multiprocessing.process.BaseProcess]
    ) -> None:
        sc, d = self.sc, self.data
        deadline = d.t0 + sc.duration + sc.drain_s + 60
        while len(d.finals) < len(procs):
            try:
                rec = q.get_nowait()
            except queue.Empty:
                if time.time() > deadline:
                    raise RuntimeError("workers did not finish in time") from None
                if all(not p.is_alive() for p in procs) and q.empty():
                    raise RuntimeError("a worker process died; see its output above") from None
                await asyncio.sleep(0.1)
                continue
            if rec.get("final"):
                d.finals.append(rec)
            d.progress.append({k: v for k, v in rec.items() if k != "clients"})
        if not self.quiet and sys.stderr.isatty():
            print(file=sys.stderr)
