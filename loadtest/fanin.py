"""``loadtest bench fanin``: thousands of live connections through one proxy process.

Each of ``--conns`` clients opens a WebSocket through the proxy to the echo
backends and sends a small message ``--rate`` times a second (random phases),
timing each echo. The clients are spread over ``--client-procs`` processes
(one process may hold 20,000 descriptors) and over ``--sources`` loopback
source addresses (127.0.1.1, 127.0.1.2, …), so no client address holds more
than the gateway's default ``max_conns_per_ip`` and the gateway runs with its
default per-address limits. A proxied connection costs the proxy two
descriptors: 9,000 of them take 18,000 of its 20,000.

Measured once every client is connected, over ``--duration`` seconds: the
proxy's CPU per message, its RSS and descriptors, messages/s and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop
from hdrh.histogram import HdrHistogram

from loadtest.bench_load import _upgrade, cpu_s, proc_tree, rss_kib, start, wait_port
from loadtest.bench_systems import Spec, start_system
from loadtest.topology import free_port

__all__ = ["run_fanin"]

PAYLOAD = b"x" * 64
# A masked text frame (RFC 6455 §5.2) with an all-zero mask: the payload goes as is.
FRAME = bytes((0x81, 0x80 | len(PAYLOAD))) + b"\0\0\0\0" + PAYLOAD


def source_addresses(n: int) -> list[str]:
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]


def client_proc(
    port: int, first: int, conns: int, sources: list[str], rate: float, out: Any, go: Any
) -> None:
    uvloop.run(_clients(port, first, conns, sources, rate, out, go))


async def _clients(
    port: int, first: int, conns: int, sources: list[str], rate: float, out: Any, go: Any
) -> None:
    loop = asyncio.get_running_loop()
    hist = HdrHistogram(1, 60_000_000, 3)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0
    sem = asyncio.Semaphore(24)  # a handful of upgrades per source address at a time

    async def connect(i: int) -> None:
        nonlocal failed
        src = sources[i % len(sources)]
        async with sem:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
                w.write(_upgrade(f"fan{i}"))
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                failed += 1
                return
            if head.startswith(b"HTTP/1.1 101"):
                opened.append((r, w))
            else:
                failed += 1
                w.close()

    await asyncio.gather(*(connect(first + i) for i in range(conns)))
    out.put({"opened": len(opened), "failed": failed})
    await loop.run_in_executor(None, go.wait)
    duration = float(go.duration.value)
    stop = loop.time() + duration
    count = 0
    errors = 0

    async def talk(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal count, errors
        await asyncio.sleep(random.random() / rate)
        due = loop.time()
        try:
            while loop.time() < stop:
                t = time.perf_counter()
                w.write(FRAME)
                head = await r.readexactly(2)
                await r.readexactly(head[1] & 0x7F)
                hist.record_value(max(1, int((time.perf_counter() - t) * 1e6)))
                count += 1
                due += 1 / rate
                await asyncio.sleep(max(0.0, due - loop.time()))
        except (OSError, asyncio.IncompleteReadError):
            errors += 1

    await asyncio.gather(*(talk(r, w) for r, w in opened))
    for _, w in opened:
        w.close()
    out.put({"count": count, "errors": errors, "hist": hist.encode()})


class Go:
    """A start signal shared with the client processes, and the run's length."""

    def __init__(self, ctx: Any):
        self.event = ctx.Event()
        self.duration = ctx.Value("d", 0.0)

    def wait(self) -> None:
        self.event.wait()


def fan_in(system: Any, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    go = Go(ctx)
    sources = source_addresses(args.sources)
    per = args.conns // args.client_procs
    procs = [
        ctx.Process(target=client_proc, args=(system.port, i * per, per, sources, args.rate, q, go))
        for i in range(args.client_procs)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    ready = [q.get(timeout=600) for _ in procs]
    open_s = time.monotonic() - t0
    pid = system.proc.pid
    time.sleep(1.0)
    rss, fds = rss_kib(pid), sum(len(os.listdir(f"/proc/{p}/fd")) for p in proc_tree(pid))
    cpu0 = cpu_s(pid)
    go.duration.value = args.duration
    go.event.set()
    results = [q.get(timeout=args.duration + 120) for _ in procs]
    cpu1 = cpu_s(pid)
    for p in procs:
        p.join(30)
    hist = HdrHistogram(1, 60_000_000, 3)
    for r in results:
        hist.decode_and_add(r["hist"])
    count = sum(r["count"] for r in results)
    return {
        "system": system.name,
        "conns": sum(r["opened"] for r in ready),
        "failed": sum(r["failed"] for r in ready),
        "open_s": round(open_s, 1),
        "errors": sum(r["errors"] for r in results),
        "msgs_per_s": round(count / args.duration),
        "cpu_us_per_msg": round((cpu1 - cpu0) * 1e6 / count, 1) if count else None,
        "cpu_share": round((cpu1 - cpu0) / args.duration, 3),
        "rss_mib": round(rss / 1024, 1),
        "descriptors": fds,
        "p50_us": hist.get_value_at_percentile(50),
        "p99_us": hist.get_value_at_percentile(99),
        "p999_us": hist.get_value_at_percentile(99.9),
    }


def run_fanin(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="fanin-"))
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    rows = []
    load, started = os.getloadavg(), time.time()
    try:
        backends = []
        for _ in range(2):
            p = free_port()
            procs.append(
                start([py, "-m", "loadtest.echo_server", f"127.0.0.1:{p}"], work / f"echo-{p}.log")
            )
            backends.append(f"127.0.0.1:{p}")
        for b in backends:
            asyncio.run(wait_port(int(b.rsplit(":", 1)[1])))
        for run in range(args.pairs):
            # Alternated like the other benchmarks: the order reversed every other round.
            systems = args.systems or ["gateway", "nginx"]
            for kind in systems if run % 2 == 0 else systems[::-1]:
                s = start_system(Spec(kind), backends, work, per_address_limits=True)
                if s is None or s.proc is None:
                    continue
                procs.append(s.proc)
                asyncio.run(wait_port(s.port))
                rec = {"run": run, **fan_in(s, args)}
                print(orjson.dumps(rec).decode(), flush=True)
                rows.append(rec)
                s.proc.terminate()
                s.proc.wait(30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    if args.write:
        write_fanin(Path(args.write), args, rows, load, started)
    return 0


def write_fanin(
    path: Path,
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    load: tuple[float, ...],
    started: float,
) -> None:
    from loadtest.bench import machine

    cmd = (
        f"python -m loadtest bench fanin --conns {args.conns} --client-procs "
        f"{args.client_procs} --sources {args.sources} --rate {args.rate:g} "
        f"--duration {args.duration:g} --systems {','.join(args.systems or ['gateway', 'nginx'])}"
    )
    if args.pairs > 1:
        cmd += f" --pairs {args.pairs}"
    lines = [
        "<!-- bench:fanin:start -->",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} (start); load "
        f"average at start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}",
        "",
        "| run | system | connections (failed) | opened in | msgs/s | CPU µs / msg | CPU share "
        "| RSS MiB | descriptors | p50 µs | p99 µs | p99.9 µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run'] + 1} | {r['system']} | {r['conns']} ({r['failed']}) | {r['open_s']} s "
            f"| {r['msgs_per_s']} | {r['cpu_us_per_msg']} | {r['cpu_share']} | {r['rss_mib']} "
            f"| {r['descriptors']} | {r['p50_us']} | {r['p99_us']} | {r['p999_us']} |"
        )
    lines.append("<!-- bench:fanin:end -->")
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start_m, end_m = "<!-- bench:fanin:start -->", "<!-- bench:fanin:end -->"
    if start_m in text and end_m in text:
        text = text[: text.index(start_m)] + block + text[text.index(end_m) + len(end_m) :]
    else:
        text = text.rstrip() + "\n\n## fanin\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)
