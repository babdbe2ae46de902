"""``python -m loadtest attack-backend KIND``: one client against the backend that owns it.

A real topology (gateway with its control plane, two ``counter`` backends, the
default durability mode) and, on keys of the node under attack, ``--witnesses``
sessions of the client library sending a counter message every 50 ms each. They are
measured for ``--baseline`` seconds alone, then for ``--duration`` seconds while one
client (its own session, through the gateway, the only way in) does one of:

  nested     messages of empty lists (``[[],[],…]``, just under 1 MiB each: 350,000
             values once decoded), ``--megabytes`` in all, reconnecting when cut
  no-ack     messages of 256 KiB strings, as fast as it can, never acknowledging a
             reply, so the node holds its input; ``--megabytes`` in all

Reported: the owning backend's RSS growth (peak during the attack minus the
baseline), the witnesses' round-trip p50/p99 before and during, their errors, and
whether every witness message was answered exactly once (the counter's ground
truth). Targets: growth ≤ 16 MiB, the witnesses' p99 no worse than twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from clientlib import Client
from clientlib.kernel.routing import SlotTable
from loadtest.bench import rss_kib
from loadtest.topology import Topology

__all__ = ["KINDS", "add_parser", "main", "run"]

KINDS = ("nested", "no-ack")
MIB = 1 << 20


def p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)


class Witness:
    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        self.rtts: list[tuple[float, float]] = []  # (at, seconds)
        self.errors = 0
        self.sent = 0
        self.counts: list[int] = []

    async def run(self, until: float) -> None:
        async with Client(self.url, self.key, ping_interval=2, ping_timeout=4) as c:
            while time.monotonic() < until:
                t0 = time.monotonic()
                self.sent += 1
                await c.send({"n": self.sent})
                try:
                    reply = await asyncio.wait_for(c.recv(), 10)
                except TimeoutError:
                    self.errors += 1
                    continue
                self.counts.append(int(reply["count"]))
                self.rtts.append((t0, time.monotonic() - t0))
                await asyncio.sleep(0.05)
            self.errors += c.stats.not_resumed


async def attacker(url: str, key: str, kind: str, budget: int, until: float) -> dict[str, Any]:
    sent = closes = 0
    if kind == "nested":
        data = "[" + ",".join(["[]"] * (MIB // 3 - 30)) + "]"
    else:
        data = '"' + "s" * (256 * 1024) + '"'
    while sent < budget and time.monotonic() < until:
        with contextlib.suppress(OSError, WebSocketException, TimeoutError):
            async with connect(f"{url}?key={key}", max_size=None, compression=None) as ws:
                await ws.send('{"t":"hello","sid":null,"last":0}')
                await asyncio.wait_for(ws.recv(), 5)
                seq = 0
                while sent < budget and time.monotonic() < until:
                    seq += 1
                    msg = f'{{"t":"msg","seq":{seq},"ack":0,"d":{data}}}'
                    await ws.send(msg)
                    sent += len(msg)
        closes += 1
        await asyncio.sleep(0.05)
    return {"sent_mib": round(sent / MIB, 1), "connections": closes}


async def run(
    kind: str, duration: float, baseline: float, witnesses: int, megabytes: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"attack-backend-{kind}-"))
    topo = Topology(work, backends=2, capacity=100000)
    await topo.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            table = SlotTable.from_json(await topo.admin_get(s, "/v1/table?full=1"))
        keys = (f"w{i}" for i in range(100_000))
        mine = [k for k in keys if (r := table.route(k)) is not None and r.node == "node-1"]
        victim = topo.nodes["node-1"].popen
        assert victim is not None
        ws = [Witness(topo.url, k) for k in mine[:witnesses]]
        start = time.monotonic()
        split = start + baseline
        end = split + duration
        tasks = [asyncio.create_task(w.run(end)) for w in ws]
        await asyncio.sleep(baseline)
        base_rss = rss_kib(victim.pid)
        peak = base_rss
        attack = asyncio.create_task(attacker(topo.url, mine[-1], kind, megabytes * MIB, end))
        while time.monotonic() < end:
            peak = max(peak, rss_kib(victim.pid))
            await asyncio.sleep(0.02)
        seen = await attack
        await asyncio.gather(*tasks, return_exceptions=True)
        before = [r for w in ws for t, r in w.rtts if t < split]
        during = [r for w in ws for t, r in w.rtts if t >= split]
        exact = all(
            w.counts == list(range(w.counts[0], w.counts[0] + len(w.counts)))
            for w in ws
            if w.counts
        )
        p99_before, p99_during = p(before, 0.99), p(during, 0.99)
        result: dict[str, Any] = {
            "attack": f"backend {kind}",
            "attacker": seen,
            "rss_growth_mib": round((peak - base_rss) / 1024, 1),
            "baseline_p50_ms": p(before, 0.5),
            "baseline_p99_ms": p(before, 0.99),
            "during_p50_ms": p(during, 0.5),
            "during_p99_ms": p(during, 0.99),
            "witness_errors": sum(w.errors for w in ws),
            "witnesses_exact": exact,
        }
        result["p99_ratio"] = round(p99_during / max(p99_before, 0.01), 2)
        return result
    finally:
        await asyncio.get_running_loop().run_in_executor(None, topo.stop, 10.0)


def add_parser(sub: Any) -> None:
    a = sub.add_parser(
        "attack-backend",
        help="one client against the backend that owns it, next to witness sessions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("kind", choices=[*KINDS, "all"])
    a.add_argument("--duration", type=float, default=10.0)
    a.add_argument("--baseline", type=float, default=5.0)
    a.add_argument("--witnesses", type=int, default=10)
    a.add_argument("--megabytes", type=int, default=42, help="what the attacker sends in all")


def main(args: argparse.Namespace) -> int:
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    failed = False
    for kind in kinds:
        r = uvloop.run(run(kind, args.duration, args.baseline, args.witnesses, args.megabytes))
        print(orjson.dumps(r).decode(), flush=True)
        failed |= r["rss_growth_mib"] > 16 or not r["witnesses_exact"]
    return 1 if failed else 0
