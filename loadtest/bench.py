"""``loadtest bench relay|backend|slow-reader|fanin``: side-by-side benchmarks.

relay:   the same plain echo backends reached directly, through our gateway, through
         nginx and through a frame-by-frame websockets relay (see
         :mod:`loadtest.bench_systems`). Closed-loop echo round trips over ``--conns``
         connections, for each ``--payload`` size.
backend: ``python -m backend echo`` (session protocol) against a bare websockets echo;
         with ``--durability``, the echo backend in each durability mode with 1, 10
         and 100 sessions per routing key (``--per-key``), each compared with handoff
         mode at the same sessions per key.

The machine is shared, so systems are compared in **pairs**: with ``--pairs N``
each system runs N times, the order reversed every other round, and each round
gives a ratio to the reference (nginx; bare websockets; or the ``--baseline``
checkout). The medians of those ratios are what the tables quote.

Figures: CPU µs of the proxy (or backend) process tree per round trip, from /proc;
RSS growth per idle proxied connection at ``--idle-conns``; msgs/s; latency
percentiles from HdrHistogram. One JSON object per measurement is printed per
line, and a table goes into ``docs/benchmarks.md`` with the command, the machine
and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from hdrh.histogram import HdrHistogram

from loadtest.bench_load import (
    cpu_s,
    cpu_split,
    drive,
    idle_conns,
    rss_kib,
    slow_readers,
    start,
    wait_port,
)
from loadtest.bench_systems import Spec, System, start_backend_system, start_system
from loadtest.topology import free_port

__all__ = ["cpu_s", "rss_kib", "run_bench", "wait_port"]

METRICS = (
    "cpu_us_per_rt",
    "user_us_per_rt",
    "rss_kib_per_conn",
    "msgs_per_s",
    "p50_us",
    "p99_us",
    "p999_us",
)
RATIOS = ("cpu_us_per_rt", "user_us_per_rt", "rss_kib_per_conn", "msgs_per_s", "p50_us", "p99_us")


def measure(
    sys_: System,
    conns: int,
    duration: float,
    idle: int,
    session: bool,
    *,
    payload: int = 64,
    client_procs: int = 1,
    profile: Path | None = None,
    keys: list[str] | None = None,
) -> dict[str, Any]:
    pid = sys_.proc.pid if sys_.proc else None
    spy = start_profile(pid, duration, profile) if pid and profile else None
    cpu0 = cpu_split(pid) if pid else (0.0, 0.0)
    count, hist = drive(
        sys_.url, conns, duration, session, procs=client_procs, payload=payload, keys=keys
    )
    cpu1 = cpu_split(pid) if pid else (0.0, 0.0)
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    if spy is not None and profile is not None:
        spy.wait(30)
        print_profile(profile)
    rec: dict[str, Any] = {
        "system": sys_.name,
        "payload": payload,
        "conns": conns,
        "cpu_us_per_rt": round((user + system) * 1e6 / count, 1) if pid and count else None,
        # The split says where the time goes: user (our code, the event loop) or the kernel.
        "user_us_per_rt": round(user * 1e6 / count, 1) if pid and count else None,
        "msgs_per_s": round(count / (duration - min(1.0, duration / 5))),
        "p50_us": hist.get_value_at_percentile(50),
        "p99_us": hist.get_value_at_percentile(99),
        "p999_us": hist.get_value_at_percentile(99.9),
        "rss_kib_per_conn": None,
        "idle_conns": idle,
    }
    if pid and idle:

        async def mem() -> float:
            warm = await idle_conns(sys_.port, 100)
            await asyncio.sleep(0.5)
            base = rss_kib(pid)
            ws = await idle_conns(sys_.port, idle)
            await asyncio.sleep(1.0)
            grown = rss_kib(pid)
            for w in ws + warm:
                w.close()
            return (grown - base) / idle

        rec["rss_kib_per_conn"] = round(asyncio.run(mem()), 2)
    return rec


# ---------------------------------------------------------------------- profile


def start_profile(pid: int, duration: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the gateway (and its workers) for the measured run: collapsed stacks."""
    exe = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--rate",
            "250",
            "--duration",
            str(int(duration)),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def print_profile(path: Path, top: int = 15) -> None:
    """The functions that hold the samples (self time), from py-spy's collapsed stacks."""
    if not path.exists():
        print("bench: no profile (is py-spy installed?)", file=sys.stderr)
        return
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
        total += int(count)
    print(f"profile {path}: {total} samples; self time by function:", file=sys.stderr)
    for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * n / max(total, 1):5.1f}%  {leaf}", file=sys.stderr)


# ---------------------------------------------------------------------- pairs


def durability_label(mode: str, per_key: int) -> str:
    return f"{mode}, {per_key} session{'s' if per_key > 1 else ''}/key"


def durability_specs(args: argparse.Namespace) -> tuple[list[Spec], dict[str, str]]:
    """bench backend --durability: each mode at each sessions-per-key count, and for
    each row the row its ratios are taken to (handoff at the same sessions per key)."""
    specs = [
        Spec("backend-echo", label=durability_label(m, k), durability=m, per_key=k)
        for k in args.per_key
        for m in args.durability
    ]
    if args.baseline:
        # The other checkout's backend in the same modes, next to this one's.
        name = checkout_name(Path(args.baseline))
        specs += [
            Spec(
                "baseline",
                label=f"baseline {name}: {durability_label(m, k)}",
                durability=m,
                per_key=k,
            )
            for k in args.per_key
            for m in args.durability
            if m != "handoff"
        ]
    return specs, {s.name: durability_label("handoff", s.per_key) for s in specs}


def specs_for(args: argparse.Namespace) -> tuple[list[Spec], str]:
    """The systems to alternate and the reference the ratios are taken to."""
    base_label = f"baseline {checkout_name(Path(args.baseline))}" if args.baseline else ""
    if args.what == "backend" and getattr(args, "durability", None):
        return durability_specs(args)[0], "handoff at the same sessions per key"
    if args.what == "backend":
        if args.baseline:
            return [Spec("backend-echo"), Spec("baseline", label=base_label)], base_label
        return [Spec("bare-websockets"), Spec("backend-echo")], "bare-websockets"
    if args.workers > 1:
        n = args.workers
        return [
            Spec("gateway", 1, "gateway --workers 1"),
            Spec("gateway", n, f"gateway --workers {n}"),
            Spec("nginx", 1, "nginx 1 worker"),
            Spec("nginx", n, f"nginx {n} workers"),
        ], "gateway --workers 1"
    if args.baseline:
        return [Spec("gateway"), Spec("baseline", label=base_label)], base_label
    if args.systems:
        return [Spec(n) for n in args.systems], "nginx"
    if args.pairs > 1:
        return [Spec("gateway"), Spec("nginx")], "nginx"
    return [Spec(n) for n in ("direct", "gateway", "nginx", "naive-relay")], "nginx"


def checkout_name(path: Path) -> str:
    """A checkout's commit (short hash), or its directory's name when it is not one."""
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else path.name


def run_pairs(
    args: argparse.Namespace, work: Path, procs: list[subprocess.Popen[bytes]]
) -> tuple[list[dict[str, Any]], str]:
    specs, reference = specs_for(args)
    backends: list[str] = []
    if args.what == "relay":
        for _ in range(2):
            p = free_port()
            procs.append(
                start(
                    [sys.executable, "-m", "loadtest.echo_server", f"127.0.0.1:{p}"],
                    work / f"echo-{p}.log",
                )
            )
            backends.append(f"127.0.0.1:{p}")
        for b in backends:
            asyncio.run(wait_port(int(b.rsplit(":", 1)[1])))
    baseline = Path(args.baseline).resolve() if args.baseline else None
    rows: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        order = specs if pair % 2 == 0 else specs[::-1]
        for payload in args.payload:
            for spec in order:
                s = (
                    start_system(spec, backends, work, baseline)
                    if args.what == "relay"
                    else start_backend_system(spec, work, baseline)
                )
                if s is None:
                    continue
                if s.proc is not None:
                    procs.append(s.proc)
                asyncio.run(wait_port(s.port))
                time.sleep(0.5 if spec.workers == 1 else 1.5)  # every worker listening
                # Memory per idle connection does not depend on the payload: once per pair.
                idle = (
                    args.idle_conns
                    if args.what == "relay" and spec.kind != "direct" and payload == args.payload[0]
                    else 0
                )
                profile = (
                    Path(args.profile)
                    if args.profile
                    and pair == 0
                    and (
                        spec.kind == "gateway"
                        if args.profile_system is None
                        else spec.name == args.profile_system
                    )
                    and payload == args.payload[0]
                    else None
                )
                conns, keys = args.conns, None
                if spec.per_key:
                    # Every mode at the same concurrency: as many connections as the most
                    # sessions per key asked for (at least --conns), spread over keys.
                    conns = max(args.conns, *args.per_key)
                    keys = [f"k{i}" for i in range(max(conns // spec.per_key, 1))]
                rec = measure(
                    s,
                    conns,
                    args.duration,
                    idle,
                    args.what == "backend" and spec.kind != "bare-websockets",
                    payload=payload,
                    client_procs=args.client_procs,
                    profile=profile,
                    keys=keys,
                )
                rec["pair"] = pair
                print(orjson.dumps(rec).decode(), flush=True)
                rows.append(rec)
                if s.proc is not None:
                    s.proc.terminate()
                    s.proc.wait(20)
    return rows, reference


def summarize(
    rows: list[dict[str, Any]], reference: str, refs: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Per payload and system: the median of each figure over the pairs, and the median
    of the per-pair ratios to the reference measured in the same pair (``refs``: a
    reference per system, where it has its own)."""
    out: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["payload"], r["system"]) for r in rows))
    for payload, system in keys:
        ref_name = (refs or {}).get(system, reference)
        mine = [r for r in rows if r["payload"] == payload and r["system"] == system]
        summary: dict[str, Any] = {"system": system, "payload": payload, "pairs": len(mine)}
        for m in METRICS:
            vals = [r[m] for r in mine if r[m] is not None]
            summary[m] = round(statistics.median(vals), 2) if vals else None
        for m in RATIOS:
            ratios = []
            for r in mine:
                ref = next(
                    (
                        x
                        for x in rows
                        if x["pair"] == r["pair"]
                        and x["payload"] == payload
                        and x["system"] == ref_name
                    ),
                    None,
                )
                if ref is not None and r[m] is not None and ref[m]:
                    ratios.append(r[m] / ref[m])
            summary[f"{m}_ratios"] = [round(x, 3) for x in ratios]
            summary[f"{m}_ratio"] = round(statistics.median(ratios), 3) if ratios else None
        out.append(summary)
        print(orjson.dumps({"summary": True, **summary}).decode(), flush=True)
    return out


# ---------------------------------------------------------------------- slow readers


def run_slow_reader(
    args: argparse.Namespace, work: Path, procs: list[subprocess.Popen[bytes]]
) -> list[dict[str, Any]]:
    """Echo clients' latency through the gateway, alone and next to clients that stop
    reading a firehose; and the gateway's memory while they are stuck."""
    from gateway.route_source import StaticDirectory

    py = sys.executable
    echo_p, hose_p = free_port(), free_port()
    procs.append(
        start([py, "-m", "loadtest.echo_server", f"127.0.0.1:{echo_p}"], work / "echo.log")
    )
    procs.append(
        start(
            [py, "-m", "loadtest.echo_server", f"127.0.0.1:{hose_p}", "--flood"], work / "hose.log"
        )
    )
    echo, hose = f"127.0.0.1:{echo_p}", f"127.0.0.1:{hose_p}"
    gw = start_system(Spec("gateway"), [echo, hose], work)
    assert gw is not None and gw.proc is not None
    procs.append(gw.proc)
    for p in (echo_p, hose_p, gw.port):
        asyncio.run(wait_port(p))
    d = StaticDirectory([echo, hose])
    names = (f"k{i}" for i in range(100_000))
    echo_keys = [k for k in names if (r := d.route(k)) and r.node == echo][: args.conns]
    hose_key = next(
        k for k in (f"h{i}" for i in range(100_000)) if (r := d.route(k)) and r.node == hose
    )
    rows = []
    for label, n_slow in (("gateway, no slow reader", 0), ("gateway, 5 slow readers", 5)):

        async def with_slow(n: int = n_slow, pid: int = gw.proc.pid) -> tuple[int, Any, int]:
            base = rss_kib(pid)
            writers = await slow_readers(gw.port, hose_key, n)
            await asyncio.sleep(1.0)  # their buffers fill up to the high-water mark
            loop = asyncio.get_running_loop()
            count, hist = await loop.run_in_executor(
                None, lambda: drive(gw.url, args.conns, args.duration, False, keys=echo_keys)
            )
            grown = rss_kib(pid) - base
            for w in writers:
                w.close()
            return count, hist, grown

        count, hist, grown = asyncio.run(with_slow())
        rows.append(row(label, args, count, hist) | {"rss_growth_kib": grown, "slow": n_slow})
        print(orjson.dumps(rows[-1]).decode(), flush=True)
    return rows


def row(label: str, args: argparse.Namespace, count: int, hist: HdrHistogram) -> dict[str, Any]:
    return {
        "system": label,
        "payload": args.payload[0],
        "pairs": 1,
        "conns": args.conns,
        "cpu_us_per_rt": None,
        "msgs_per_s": round(count / (args.duration - min(1.0, args.duration / 5))),
        "p50_us": hist.get_value_at_percentile(50),
        "p99_us": hist.get_value_at_percentile(99),
        "p999_us": hist.get_value_at_percentile(99.9),
        "rss_kib_per_conn": None,
    }


# ---------------------------------------------------------------------- entry


def run_bench(args: argparse.Namespace) -> int:
    if args.what == "fanin":
        from loadtest.fanin import run_fanin

        return run_fanin(args)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    load, started = os.getloadavg(), time.time()
    try:
        if args.what == "slow-reader":
            summary = run_slow_reader(args, work, procs)
            reference = "gateway, no slow reader"
        else:
            rows, reference = run_pairs(args, work, procs)
            refs = (
                durability_specs(args)[1]
                if args.what == "backend" and getattr(args, "durability", None)
                else None
            )
            summary = summarize(rows, reference, refs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    if args.write:
        from loadtest.bench_report import write_markdown

        write_markdown(Path(args.write), args, summary, reference, load, started)
    return 0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
