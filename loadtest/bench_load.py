"""The benchmarks' measuring tools: a process tree's CPU and memory from /proc, and the
load generators (closed-loop echo clients in their own processes, idle connections,
clients that never read)."""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import connect

__all__ = [
    "cpu_s",
    "cpu_split",
    "drive",
    "idle_conns",
    "proc_tree",
    "rss_kib",
    "slow_readers",
    "start",
    "wait_port",
]

TICK = os.sysconf("SC_CLK_TCK")


def proc_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for c in children:
        pids += proc_tree(int(c))
    return pids


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its children (a gateway's workers)."""
    user = system = 0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / TICK, system / TICK


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    return sum(cpu_split(pid))


def rss_kib(pid: int) -> int:
    total = 0
    for p in proc_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def start(args: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    return subprocess.Popen(
        args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
    )


async def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------- echo clients


def client_proc(
    url: str,
    conns: int,
    duration: float,
    session: bool,
    out: Any,
    keys: list[str] | None = None,
    payload: int = 56,
) -> None:
    uvloop.run(_client(url, conns, duration, session, out, keys, payload))


async def _client(
    url: str,
    conns: int,
    duration: float,
    session: bool,
    out: Any,
    keys: list[str] | None,
    payload_size: int,
) -> None:
    hist = HdrHistogram(1, 60_000_000, 3)
    # A JSON value of about payload_size bytes (the session protocol's "d" must be JSON).
    payload = orjson.dumps({"p": "x" * max(payload_size - 8, 0)})
    stop = time.perf_counter() + duration
    warm = time.perf_counter() + min(1.0, duration / 5)
    count = 0

    async def one(i: int) -> None:
        nonlocal count
        async with connect(
            f"{url}?key={keys[i % len(keys)] if keys else f'k{i}'}",
            compression=None,
            ping_interval=None,
            max_size=None,
        ) as ws:
            seq = last = 0
            if session:
                await ws.send(b'{"t":"hello","sid":null,"last":0}', text=True)
                await ws.recv()
            while time.perf_counter() < stop:
                t = time.perf_counter()
                if session:
                    seq += 1
                    msg = b'{"t":"msg","seq":%d,"ack":%d,"d":%b}' % (seq, last, payload)
                else:
                    msg = payload
                await ws.send(msg, text=True)
                reply = await ws.recv(decode=False)
                if session:
                    last = orjson.loads(reply)["seq"]
                if t > warm:
                    hist.record_value(max(1, int((time.perf_counter() - t) * 1e6)))
                    count += 1

    await asyncio.gather(*(one(i) for i in range(conns)))
    out.put({"count": count, "hist": hist.encode()})


def drive(
    url: str,
    conns: int,
    duration: float,
    session: bool,
    procs: int = 1,
    keys: list[str] | None = None,
    payload: int = 56,
) -> tuple[int, HdrHistogram]:
    """Closed-loop echo round trips over ``conns`` connections spread over ``procs``
    client processes; (round trips after the warm-up, their latency histogram in µs)."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    ps = [
        ctx.Process(
            target=client_proc, args=(url, conns // procs, duration, session, q, keys, payload)
        )
        for _ in range(procs)
    ]
    for p in ps:
        p.start()
    results = [q.get(timeout=duration + 60) for _ in ps]
    for p in ps:
        p.join(10)
    hist = HdrHistogram(1, 60_000_000, 3)
    for r in results:
        hist.decode_and_add(r["hist"])
    return sum(r["count"] for r in results), hist


def _upgrade(key: str, path: str = "/ws") -> bytes:
    ws_key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path}?key={key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def idle_conns(port: int, n: int, path: str = "/ws") -> list[asyncio.StreamWriter]:
    """Open ``n`` idle upgraded connections with a minimal raw client (cheap on our side)."""
    writers: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(_upgrade(f"idle{i}", path))
            head = await r.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"idle connection refused: {head[:40]!r}")
            writers.append(w)

    await asyncio.gather(*(one(i) for i in range(n)))
    return writers


async def slow_readers(port: int, key: str, n: int) -> list[asyncio.StreamWriter]:
    """Clients that upgrade to a firehose and then never read a byte."""
    out = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1024)
        w.write(_upgrade(key))
        await r.readuntil(b"\r\n\r\n")
        out.append(w)
    return out
