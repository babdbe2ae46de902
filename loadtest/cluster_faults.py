"""``loadtest cluster-faults``: faults on the cluster topology, each measured.

Starts :class:`~loadtest.cluster.ClusterTopology` (3 etcd members, 3 gateways,
3 backends, Redis; write-through), streams numbered counter messages from
clients that know every gateway's URL, and applies in turn:

1. ``leader-kill``: kill -9 the gateway that leads the control plane. Measured:
   how long until another leads, until a move commits again, how long its own
   clients took to resume on another gateway (p99), and whether clients of the
   other gateways noticed anything;
2. ``etcd-member-kill``: kill -9 one etcd member (then start it again);
3. ``backend-partition``: cut a backend off from etcd. Measured: when it
   stopped serving (its ``lease_lost``), when the leader gave its slots away,
   and the fenced writes the store accepted and refused meanwhile;
4. ``gateway-partition``: cut a standby gateway off from every other host;
5. ``store-restart``: kill -9 Redis and start it again.

At the end every stream is checked: nothing lost, duplicated or reordered.
Prints one JSON line per fault and writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from clientlib import Client
from clientlib.kernel.backoff import BackoffPolicy
from loadtest.cluster import ClusterTopology, Hosts, on_client_host
from loadtest.netfault import Stream, pct

FAULTS = (
    "leader-kill",
    "etcd-member-kill",
    "backend-partition",
    "gateway-partition",
    "store-restart",
)


def _log_time(log: Path, event: str, after: float) -> float | None:
    """Wall time of the first ``event`` in a JSON log at or after ``after``."""
    for line in log.read_text(errors="replace").splitlines():
        if f'"event":"{event}"' not in line and f'"event": "{event}"' not in line:
            continue
        try:
            ts = orjson.loads(line)["timestamp"]
            t = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except (orjson.JSONDecodeError, KeyError, ValueError):
            continue
        if t >= after:
            return t
    return None


class Run:
    def __init__(self, topo: ClusterTopology, streams: list[Stream]):
        self.topo = topo
        self.streams = streams

    def on(self, gw: str) -> list[Stream]:
        url = self.topo.urls[list(self.topo.gws).index(gw)]
        return [st for st in self.streams if st.client.url.startswith(url)]

    @staticmethod
    def resumes(streams: Sequence[Stream], since: float) -> list[float]:
        out = []
        for st in streams:
            downs = [d for d in st.disconnects if d >= since]
            ups = [c for c in st.connects if c >= since]
            if downs and ups:
                out.append(min(ups) - since)
        return out

    @staticmethod
    def noticed(streams: Sequence[Stream], since: float, until: float) -> int:
        return sum(1 for st in streams if any(since <= d <= until for d in st.disconnects))

    def p99_during(self, since: float, until: float) -> float | None:
        """p99 latency of the messages *sent* in [since, until] (an earlier fault's backlog
        arriving late is not counted here)."""
        sent = [
            ms for st in self.streams for at, ms in st.latencies if since <= at - ms / 1000 <= until
        ]
        return pct(sent, 99)

    async def wait(self, cond: Any, timeout: float) -> float | None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if await cond():
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        return None

    # ------------------------------------------------------------------ faults

    async def leader_kill(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        topo = self.topo
        leader = await topo.leader(s)
        assert leader is not None, "no leader to kill"
        victims = self.on(leader)
        others = [st for st in self.streams if st not in victims]
        t0 = time.monotonic()
        topo.kill(leader)

        async def led() -> bool:
            return (await topo.leader(s)) not in (None, leader)

        takeover = await self.wait(led, 30)
        new = await topo.leader(s)
        move_s = None
        if new is not None:
            table = await topo.get(s, new, "/v1/table?full=1")
            owners = table["owners"]
            src = owners[0]
            dst = next(n for n in topo.nodes if n != src)
            async with s.post(
                topo.admin_url(new) + "/v1/move",
                json={"slot": 0, "to": dst},
                headers={"Authorization": f"Bearer {topo.admin_token}"},
            ) as r:
                if r.status == 200:
                    move_s = time.monotonic() - t0
        await asyncio.sleep(4)
        back = self.resumes(victims, t0)
        out = {
            "fault": "leader-kill",
            "killed": leader,
            "new_leader": new,
            "election_lease_s": topo.election_lease_s,
            "takeover_s": round(takeover, 2) if takeover is not None else None,
            "move_committed_after_kill_s": round(move_s, 2) if move_s else None,
            "clients_on_killed_gateway": len(victims),
            "resumed_elsewhere": len(back),
            "resume_p50_s": pct(back, 50),
            "resume_p99_s": pct(back, 99),
            "other_clients_disconnected": self.noticed(others, t0, time.monotonic()),
        }
        topo.start_gateway(leader)  # back as a standby for the next faults
        await asyncio.sleep(2)
        return out

    async def etcd_member_kill(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        topo = self.topo
        assert topo.etcd is not None
        leader_before = await topo.leader(s)
        t0 = time.monotonic()
        topo.etcd.kill_member(0)
        await asyncio.sleep(6)
        t1 = time.monotonic()
        stale = [g for g in topo.gws if (await topo.get(s, g, "/v1/status")).get("stale")]
        out = {
            "fault": "etcd-member-kill",
            "member": 0,
            "clients_disconnected": self.noticed(self.streams, t0, t1),
            "p99_ms_during": self.p99_during(t0, t1),
            "leader_changed": (await topo.leader(s)) != leader_before,
            "gateways_stale": stale,
        }
        topo.etcd.start_member(0)
        await asyncio.sleep(3)
        return out

    async def backend_partition(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        topo, hosts = self.topo, self.topo.hosts
        node = "node-1"
        before = await topo.fence_counts()
        wall0, t0 = time.time(), time.monotonic()
        hosts.partition(node, topo.etcd_addrs())

        async def gone() -> bool:
            st = await topo.admin_get(s, "/v1/table")
            return node not in st.get("slots_by_node", {})

        reassigned = await self.wait(gone, 20)
        await asyncio.sleep(3)
        lost_at = _log_time(topo.nodes[node].log, "lease_lost", wall0)
        after = await topo.fence_counts()
        hosts.heal(node)

        async def back() -> bool:
            st = await topo.admin_get(s, "/v1/status")
            return bool(st.get("nodes", {}).get(node, {}).get("alive"))

        rejoined = await self.wait(back, 20)
        return {
            "fault": "backend-partition",
            "node": node,
            "node_lease_s": topo.node_lease_s,
            "stopped_serving_s": round(lost_at - wall0, 2) if lost_at else None,
            "slots_reassigned_s": round(reassigned, 2) if reassigned is not None else None,
            "fenced_writes_accepted": after.get("accepted", 0) - before.get("accepted", 0),
            "fenced_writes_refused": after.get("refused", 0) - before.get("refused", 0),
            "rejoined_after_heal_s": round(rejoined, 2) if rejoined is not None else None,
            "p99_ms_during": self.p99_during(t0, time.monotonic()),
        }

    async def gateway_partition(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        topo, hosts = self.topo, self.topo.hosts
        leader = await topo.leader(s)
        conns = {}
        for g in topo.gws:
            if g != leader:
                conns[g] = int((await topo.get(s, g, "/v1/connections")).get("total", 0))
        gw = max(conns, key=lambda g: conns[g])  # the standby with the most clients
        victims = self.on(gw)
        others = [st for st in self.streams if st not in victims]
        peers = [a for h, a in hosts.addrs.items() if h != gw]
        t0 = time.monotonic()
        hosts.partition(gw, peers)
        await asyncio.sleep(8)
        hosts.heal(gw)
        back = self.resumes(victims, t0)  # all before the heal: on another gateway
        out = {
            "fault": "gateway-partition",
            "gateway": gw,
            "hold_s": 8,
            "clients_on_it": len(victims),
            "its_relayed_connections": conns[gw],
            "resumed_elsewhere": len(back),
            "resume_p50_s": pct(back, 50),
            "resume_p99_s": pct(back, 99),
            "other_clients_disconnected": self.noticed(others, t0, time.monotonic()),
        }
        await asyncio.sleep(5)  # settle: nothing of this one in the next fault's figures
        return out

    async def store_restart(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        redis = self.topo.redis
        assert redis is not None
        t0 = time.monotonic()
        redis.kill()
        await asyncio.sleep(1.0)
        await asyncio.get_running_loop().run_in_executor(None, redis.start)
        down = time.monotonic() - t0
        await asyncio.sleep(4)
        return {
            "fault": "store-restart",
            "down_s": round(down, 2),
            "clients_disconnected": self.noticed(self.streams, t0, time.monotonic()),
            "p99_ms_during": self.p99_during(t0, time.monotonic()),
        }


def write_results(path: Path, results: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


async def inside(args: argparse.Namespace) -> int:
    hosts = Hosts(tag=args.tag or "", netns=args.tag is not None)
    if args.tag:
        hosts.adopt_client()
    topo = ClusterTopology(Path(args.workdir), hosts, backends=args.backends)
    results: list[dict[str, Any]] = []
    try:
        await topo.start()
        streams: list[Stream] = [
            Stream(
                Client(
                    topo.urls,
                    f"cf:{i}",
                    ping_interval=1.0,
                    ping_timeout=2.0,
                    connect_timeout=1.0,  # a gateway that does not answer: try the next
                    backoff=BackoffPolicy(base=0.1, cap=1.0),
                    start_timeout=30,
                ),
                args.rate,
            )
            for i in range(args.clients)
        ]
        for st in streams:
            await st.client.start()
        run = Run(topo, streams)
        plan = [f for f in args.fault if hosts.netns or "partition" not in f]
        skipped = [f for f in args.fault if f not in plan]
        tasks = [asyncio.create_task(st.run(float("inf"))) for st in streams]
        async with aiohttp.ClientSession() as s:
            await asyncio.sleep(3)
            for fault in plan:
                r = await getattr(run, fault.replace("-", "_"))(s)
                r["hosts"] = "network namespaces" if hosts.netns else "loopback addresses"
                print(orjson.dumps(r).decode(), flush=True)
                results.append(r)
        for st in streams:
            st.stop_at = time.monotonic()  # stop sending; each waits for its last replies
        await asyncio.gather(*tasks)
        totals = {"sent": 0, "lost": 0, "duplicated": 0, "reordered": 0}
        for st in streams:
            totals["sent"] += st.sent
            for k, v in st.verdict().items():
                totals[k] += v
            await st.client.close()
        summary = {"fault": "summary", "skipped": skipped, **totals}
        print(orjson.dumps(summary).decode(), flush=True)
        results.append(summary)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, topo.stop, 10.0)
        if args.out:
            write_results(Path(args.out), results)
    bad = results[-1]["lost"] or results[-1]["duplicated"] or results[-1]["reordered"]
    return 1 if bad else 0


def main(args: argparse.Namespace) -> int:
    if args.inside:
        return asyncio.run(inside(args))
    argv = ["cluster-faults", "--inside", "--workdir", args.workdir]
    argv += ["--clients", str(args.clients), "--rate", str(args.rate)]
    argv += ["--backends", str(args.backends)] + (["--out", args.out] if args.out else [])
    for f in args.fault:
        argv += ["--fault", f]
    rc = on_client_host(argv)
    if rc is not None:
        return rc
    args.tag = None
    return asyncio.run(inside(args))


def add_parser(sub: Any) -> None:
    n = sub.add_parser(
        "cluster-faults", help="faults on a 3-host etcd cluster topology", description=__doc__
    )
    n.add_argument("--fault", action="append", choices=FAULTS, help="repeatable; default all")
    n.add_argument("--clients", type=int, default=30)
    n.add_argument("--rate", type=float, default=10.0, help="messages/s per client")
    n.add_argument("--backends", type=int, default=3)
    n.add_argument("--workdir", default=f"/tmp/anchorage-cluster-{os.getpid()}")
    n.add_argument("--out", default=f"runs/cluster-faults-{time.strftime('%Y%m%d-%H%M%S')}.json")
    n.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    n.add_argument("--tag", help=argparse.SUPPRESS)
