"""``loadtest netfault``: network faults on a private loopback, measured.

Creates a network namespace (``ip netns``), re-runs itself inside it, starts a
gateway and backends there (write-through durability), streams numbered
messages from a set of clients, and applies faults to the gateway's port with
nftables and tc: random loss, a silent blackhole (half-open connections), TCP
resets, and a bandwidth cap (``tc tbf``; netem is not available everywhere).
For each fault it reports how delivery held up (lost, duplicated, reordered,
p99) and, for the blackhole, how long each hop took to notice and whether any
connection was left behind. Needs root, ``ip``, ``nft`` and ``tc``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from clientlib import Client, ClientError
from clientlib.kernel.backoff import BackoffPolicy
from loadtest.topology import Topology

FAULTS = ("loss", "blackhole", "reset", "tbf")


def missing_tools() -> list[str]:
    need = [t for t in ("ip", "nft", "tc") if shutil.which(t) is None]
    if os.geteuid() != 0:
        need.append("root")
    return need


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Stream:
    """One client sending numbered counter messages at a fixed rate."""

    client: Client
    rate: float
    sent: int = 0
    replies: list[tuple[int, int]] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (at, ms)
    disconnects: list[float] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)
    stop_at: float = float("inf")  # may be moved while it runs: sending ends at the earlier

    async def run(self, until: float) -> None:
        reader = asyncio.create_task(self._read())
        watcher = asyncio.create_task(self._watch())
        try:
            nxt = time.monotonic()
            while nxt < min(until, self.stop_at):
                nxt += 1 / self.rate
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                self.sent += 1
                await self.client.send({"n": self.sent, "t": nxt})
            deadline = time.monotonic() + 40
            while len(self.replies) < self.sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            for task in (reader, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await task

    async def _read(self) -> None:
        while True:
            m = await self.client.recv()
            now = time.monotonic()
            self.replies.append((m["n"], m["count"]))
            self.latencies.append((now, (now - m["t"]) * 1000))

    async def _watch(self) -> None:
        while True:
            ev = await self.client.events.get()
            if ev.kind == "disconnected":
                self.disconnects.append(ev.at)
            elif ev.kind == "connected":
                self.connects.append(ev.at)

    def verdict(self) -> dict[str, int]:
        ns = [n for n, _ in self.replies]
        counts = [c for _, c in self.replies]
        dup = len(ns) - len(set(ns))
        lost = self.sent - len(set(ns))
        reordered = sum(1 for a, b in itertools.pairwise(ns) if b < a)
        gaps = sum(1 for a, b in itertools.pairwise(counts) if b != a + 1)
        return {"lost": lost, "duplicated": dup + gaps, "reordered": reordered}


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p / 100 * len(s)))], 1)


async def connections(t: Topology, s: aiohttp.ClientSession) -> int:
    try:
        return int((await t.admin_get(s, "/v1/connections"))["total"])
    except (aiohttp.ClientError, OSError, KeyError):
        return -1


class Rules:
    """nftables rules on the gateway's port inside this namespace."""

    def __init__(self, port: int):
        self.port = port

    def apply(self, fault: str) -> None:
        p = str(self.port)
        nft_rule = ["nft", "add", "rule", "inet", "netfault", "input", "tcp"]
        sh("nft", "add", "table", "inet", "netfault")
        sh(
            "nft",
            "add",
            "chain",
            "inet",
            "netfault",
            "input",
            "{ type filter hook input priority 0 ; policy accept ; }",
        )
        if fault == "loss":
            for d in ("dport", "sport"):
                sh(*nft_rule, d, p, *["numgen", "random", "mod", "100", "<", "5", "drop"])
        elif fault == "blackhole":
            for d in ("dport", "sport"):
                sh(*nft_rule, d, p, "drop")
        elif fault == "reset":
            sh(*nft_rule, "dport", p, *["reject", "with", "tcp", "reset"])
        elif fault == "tbf":
            sh(
                *[
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    "lo",
                    "root",
                    "tbf",
                    "rate",
                    "2mbit",
                    "burst",
                    "32kbit",
                    "latency",
                    "400ms",
                ]
            )

    def clear(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", "netfault"], capture_output=True)
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)


async def run_fault(
    t: Topology, fault: str, clients: int, rate: float, hold: float
) -> dict[str, Any]:
    rules = Rules(t.gateway_port)
    streams = [
        Stream(
            Client(
                t.url,
                f"nf:{fault}:{i}",
                ping_interval=1.0,
                ping_timeout=2.0,
                backoff=BackoffPolicy(base=0.1, cap=1.0),
                start_timeout=20,
            ),
            rate,
        )
        for i in range(clients)
    ]
    for st in streams:
        await st.client.start()
    lead, tail = 2.0, 4.0
    start = time.monotonic()
    until = start + lead + hold + tail
    runs = [asyncio.create_task(st.run(until)) for st in streams]
    out: dict[str, Any] = {
        "fault": fault,
        "clients": clients,
        "rate_per_client": rate,
        "hold_s": hold,
    }
    async with aiohttp.ClientSession() as s:
        await asyncio.sleep(lead)
        conns_before = await connections(t, s)
        on = time.monotonic()
        rules.apply(fault)
        try:
            await asyncio.sleep(hold)
        finally:
            rules.clear()
        off = time.monotonic()
        await asyncio.gather(*runs)
        # Connections left on the gateway beyond the live clients = zombies.
        settle_deadline = time.monotonic() + 40
        conns_after = await connections(t, s)
        while conns_after > clients and time.monotonic() < settle_deadline:
            await asyncio.sleep(0.5)
            conns_after = await connections(t, s)
        out["gateway_connections_before"] = conns_before
        out["gateway_connections_after"] = conns_after
        out["zombie_connections"] = max(conns_after - clients, 0)
        out["zombies_checked_s_after_fault"] = round(time.monotonic() - off, 1)
    during = [ms for st in streams for at, ms in st.latencies if on <= at <= off + 2]
    out["p50_ms_during"] = pct(during, 50)
    out["p99_ms_during"] = pct(during, 99)
    detect = [
        min(d for d in st.disconnects if d >= on) - on
        for st in streams
        if any(d >= on for d in st.disconnects)
    ]
    out["client_detect_s_p50"] = pct(detect, 50)
    out["disconnected_clients"] = len(detect)
    back = [
        min(c for c in st.connects if c >= off) - off
        for st in streams
        if any(c >= off for c in st.connects)
    ]
    out["resume_after_fault_s_p99"] = pct(back, 99)
    totals = {"sent": 0, "lost": 0, "duplicated": 0, "reordered": 0}
    for st in streams:
        totals["sent"] += st.sent
        for k, v in st.verdict().items():
            totals[k] += v
        await st.client.close()
    out.update(totals)
    return out


async def inside(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    t = Topology(work, backends=2, capacity=1e6, durability="write-through")
    await t.start()
    results = []
    try:
        for fault in args.fault:
            r = await run_fault(t, fault, args.clients, args.rate, args.hold)
            print(orjson.dumps(r).decode(), flush=True)
            results.append(r)
    except ClientError as exc:
        print(f"netfault: client failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)
    bad = [r for r in results if r["lost"] or r["duplicated"] or r["reordered"]]
    return 1 if bad else 0


def main(args: argparse.Namespace) -> int:
    if args.inside:
        return asyncio.run(inside(args))
    missing = missing_tools()
    if missing:
        print(
            f"netfault: needs {', '.join(missing)} (apt-get install iproute2 nftables)",
            file=sys.stderr,
        )
        return 3
    ns = f"anchorage-nf-{os.getpid()}"
    try:
        sh("ip", "netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        print(f"netfault: cannot create a network namespace here: {exc.stderr!r}", file=sys.stderr)
        return 3
    try:
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        cmd = [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "loadtest",
            "netfault",
            "--inside",
            "--workdir",
            args.workdir,
            "--clients",
            str(args.clients),
            "--rate",
            str(args.rate),
            "--hold",
            str(args.hold),
        ]
        for f in args.fault:
            cmd += ["--fault", f]
        return subprocess.run(cmd).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def add_parser(sub: Any) -> None:
    n = sub.add_parser(
        "netfault", help="network faults in a private network namespace", description=__doc__
    )
    n.add_argument("--fault", action="append", choices=FAULTS, help="repeatable; default all")
    n.add_argument("--clients", type=int, default=20)
    n.add_argument("--rate", type=float, default=20.0, help="messages/s per client")
    n.add_argument("--hold", type=float, default=6.0, help="seconds each fault lasts")
    n.add_argument("--workdir", default=f"/tmp/anchorage-netfault-{os.getpid()}")
    n.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
