"""``loadtest bench relay|backend``: side-by-side benchmarks in one run.

relay:   the same plain echo backends reached directly, through our gateway, through
         nginx (``hash $arg_key consistent``, one worker) and through a frame-by-frame
         websockets relay. Closed-loop echo round trips over ``--conns`` connections.
backend: ``python -m backend echo`` (session protocol) against a bare websockets echo.

Figures: CPU µs of the proxy (or backend) process per round trip, from /proc; RSS
growth per idle proxied connection at ``--idle-conns``; msgs/s; latency percentiles
from HdrHistogram. One JSON object per system is printed per line, and a table
goes into ``docs/benchmarks.md`` with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvloop
from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import connect

from loadtest.topology import free_port

TICK = os.sysconf("SC_CLK_TCK")
# Every benchmark client comes from 127.0.0.1: the gateway's per-address limits are off.
ONE_ADDRESS = ["--max-conns-per-ip", "0", "--max-pending-per-ip", "0"]


def proc_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for c in children:
        pids += proc_tree(int(c))
    return pids


def cpu_s(pid: int) -> float:
    total = 0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICK


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


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("ab")
    return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


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


# ---------------------------------------------------------------------- load generator


def client_proc(
    url: str, conns: int, duration: float, session: bool, out: Any, keys: list[str] | None = None
) -> None:
    uvloop.run(_client(url, conns, duration, session, out, keys))


async def _client(
    url: str, conns: int, duration: float, session: bool, out: Any, keys: list[str] | None = None
) -> None:
    hist = HdrHistogram(1, 60_000_000, 3)
    payload = orjson.dumps({"p": "x" * 48})
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
) -> tuple[int, HdrHistogram]:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    ps = [
        ctx.Process(target=client_proc, args=(url, conns // procs, duration, session, q, keys))
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


async def idle_conns(port: int, n: int, path: str = "/ws") -> list[asyncio.StreamWriter]:
    """Open ``n`` idle upgraded connections with a minimal raw client (cheap on our side)."""
    writers: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            key = base64.b64encode(os.urandom(16)).decode()
            w.write(
                f"GET {path}?key=idle{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await r.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"idle connection refused: {head[:40]!r}")
            writers.append(w)

    await asyncio.gather(*(one(i) for i in range(n)))
    return writers


# ---------------------------------------------------------------------- systems


NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  upstream backends {{ hash $arg_key consistent; {servers} }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_buffering off;
    }}
  }}
}}
"""


@dataclass
class System:
    name: str
    url: str
    port: int
    proc: subprocess.Popen[bytes] | None  # the process whose CPU and memory are measured


def start_system(name: str, backends: list[str], workdir: Path) -> System | None:
    port = free_port()
    py = sys.executable
    if name == "direct":
        p0 = int(backends[0].rsplit(":", 1)[1])
        return System(name, f"ws://{backends[0]}/ws", p0, None)
    if name == "gateway":
        args = [
            py,
            "-m",
            "gateway",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--log-level",
            "warning",
            "--state-dir",
            str(workdir / "gateway-state"),
            *ONE_ADDRESS,
        ]
        for b in backends:
            args += ["--static-backend", b]
        proc = start(args, workdir / "gateway.log")
    elif name == "nginx":
        exe = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if exe is None:
            print(
                "bench: nginx not found, skipped (apt-get install nginx-light to include it)",
                file=sys.stderr,
            )
            return None
        d = workdir / "nginx"
        d.mkdir(exist_ok=True)
        servers = " ".join(f"server {b};" for b in backends)
        (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, servers=servers, port=port))
        proc = start([exe, "-p", str(d), "-c", str(d / "nginx.conf")], workdir / "nginx.log")
    elif name == "naive-relay":
        args = [py, "-m", "loadtest.naive_relay", "--listen", f"127.0.0.1:{port}"]
        for b in backends:
            args += ["--backend", b]
        proc = start(args, workdir / "naive.log")
    else:
        raise ValueError(name)
    return System(name, f"ws://127.0.0.1:{port}/ws", port, proc)


def measure(sys_: System, conns: int, duration: float, idle: int, session: bool) -> dict[str, Any]:
    pid = sys_.proc.pid if sys_.proc else None
    cpu0 = cpu_s(pid) if pid else 0.0
    count, hist = drive(sys_.url, conns, duration, session)
    cpu1 = cpu_s(pid) if pid else 0.0
    rec: dict[str, Any] = {
        "system": sys_.name,
        "conns": conns,
        "cpu_us_per_rt": round((cpu1 - cpu0) * 1e6 / count, 1) if pid and count else None,
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


# ---------------------------------------------------------------------- entry


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


async def slow_readers(port: int, key: str, n: int) -> list[asyncio.StreamWriter]:
    """Clients that upgrade to a firehose and then never read a byte."""
    out = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1024)
        ws_key = base64.b64encode(os.urandom(16)).decode()
        w.write(
            f"GET /ws?key={key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await r.readuntil(b"\r\n\r\n")
        out.append(w)
    return out


def run_slow_reader(
    args: argparse.Namespace, work: Path, procs: list[subprocess.Popen[bytes]]
) -> list[dict[str, Any]]:
    """Echo clients' latency through the gateway, alone and next to clients that stop
    reading a firehose; and the gateway's memory while they are stuck."""
    from gateway.route_source import StaticDirectory

    py = sys.executable
    echo_p, hose_p, gw_p = free_port(), free_port(), free_port()
    procs.append(
        start([py, "-m", "loadtest.echo_server", f"127.0.0.1:{echo_p}"], work / "echo.log")
    )
    procs.append(
        start(
            [py, "-m", "loadtest.echo_server", f"127.0.0.1:{hose_p}", "--flood"], work / "hose.log"
        )
    )
    echo, hose = f"127.0.0.1:{echo_p}", f"127.0.0.1:{hose_p}"
    gw = start(
        [
            py,
            "-m",
            "gateway",
            "--listen",
            f"127.0.0.1:{gw_p}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--static-backend",
            echo,
            "--static-backend",
            hose,
            "--log-level",
            "warning",
            "--state-dir",
            str(work / "gateway-state"),
            *ONE_ADDRESS,
        ],
        work / "gateway.log",
    )
    procs.append(gw)
    for p in (echo_p, hose_p, gw_p):
        asyncio.run(wait_port(p))
    d = StaticDirectory([echo, hose])
    names = (f"k{i}" for i in range(100_000))
    echo_keys = [k for k in names if (r := d.route(k)) and r.node == echo][: args.conns]
    hose_key = next(
        k for k in (f"h{i}" for i in range(100_000)) if (r := d.route(k)) and r.node == hose
    )
    url = f"ws://127.0.0.1:{gw_p}/ws"
    rows = []
    for label, n_slow in (("gateway, no slow reader", 0), ("gateway, 5 slow readers", 5)):

        async def with_slow(n: int = n_slow) -> tuple[int, HdrHistogram, int]:
            base = rss_kib(gw.pid)
            writers = await slow_readers(gw_p, hose_key, n)
            await asyncio.sleep(1.0)  # their buffers fill up to the high-water mark
            loop = asyncio.get_running_loop()
            count, hist = await loop.run_in_executor(
                None, lambda: drive(url, args.conns, args.duration, False, keys=echo_keys)
            )
            grown = rss_kib(gw.pid) - base
            for w in writers:
                w.close()
            return count, hist, grown

        count, hist, grown = asyncio.run(with_slow())
        rows.append(
            {
                "system": label,
                "conns": args.conns,
                "cpu_us_per_rt": None,
                "msgs_per_s": round(count / (args.duration - min(1.0, args.duration / 5))),
                "p50_us": hist.get_value_at_percentile(50),
                "p99_us": hist.get_value_at_percentile(99),
                "p999_us": hist.get_value_at_percentile(99.9),
                "rss_kib_per_conn": None,
                "rss_growth_kib": grown,
                "slow_readers": n_slow,
            }
        )
        print(orjson.dumps(rows[-1]).decode(), flush=True)
    return rows


def run_bench(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, Any]] = []
    try:
        if args.what == "slow-reader":
            rows = run_slow_reader(args, work, procs)
            names = []
            session = False
        elif args.what == "relay":
            ports = [free_port(), free_port()]
            for p in ports:
                procs.append(
                    start(
                        [py, "-m", "loadtest.echo_server", f"127.0.0.1:{p}"], work / f"echo-{p}.log"
                    )
                )
            for p in ports:
                asyncio.run(wait_port(p))
            backends = [f"127.0.0.1:{p}" for p in ports]
            names = ["direct", "gateway", "nginx", "naive-relay"]
            session = False
        else:
            names = ["bare-websockets", "backend-echo"]
            session = True
        for name in names:
            if args.what == "relay":
                s = start_system(name, backends, work)
            else:
                s = start_backend_system(name, work)
            if s is None:
                continue
            if s.proc is not None:
                procs.append(s.proc)
            asyncio.run(wait_port(s.port))
            idle = args.idle_conns if args.what == "relay" and name != "direct" else 0
            rec = measure(s, args.conns, args.duration, idle, session and name == "backend-echo")
            print(orjson.dumps(rec).decode(), flush=True)
            rows.append(rec)
            if s.proc is not None:
                s.proc.terminate()
                s.proc.wait(10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    if args.write:
        write_markdown(Path(args.write), args, rows)
    return 0


def start_backend_system(name: str, work: Path) -> System:
    port = free_port()
    py = sys.executable
    if name == "bare-websockets":
        proc = start([py, "-m", "loadtest.echo_server", f"127.0.0.1:{port}"], work / "bare.log")
    else:
        proc = start(
            [
                py,
                "-m",
                "backend",
                "echo",
                "--listen",
                f"127.0.0.1:{port}",
                "--store",
                str(work / "store.db"),
                "--direct",
                "on",
                "--log-level",
                "warning",
            ],
            work / "backend.log",
        )
    return System(name, f"ws://127.0.0.1:{port}/ws", port, proc)


def write_markdown(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    cmd = f"python -m loadtest bench {args.what} --duration {args.duration:g} --conns {args.conns}"
    if args.what == "relay":
        cmd += f" --idle-conns {args.idle_conns}"
    ref_name = {"relay": "nginx", "backend": "bare-websockets"}.get(
        args.what, "gateway, no slow reader"
    )
    ref = next((r for r in rows if r["system"] == ref_name), None)

    def ratio(r: dict[str, Any], k: str) -> str:
        if ref is None or r[k] is None or not ref.get(k):
            return ""
        return f" ({r[k] / ref[k]:.2f}×)"

    lines = [
        f"<!-- bench:{args.what}:start -->",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| system | CPU µs / round trip | RSS KiB / idle conn | msgs/s "
        "| p50 µs | p99 µs | p99.9 µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['cpu_us_per_rt'] or '–'}{ratio(r, 'cpu_us_per_rt')} "
            f"| {r['rss_kib_per_conn'] if r['rss_kib_per_conn'] is not None else '–'}"
            f"{ratio(r, 'rss_kib_per_conn')} | {r['msgs_per_s']} | {r['p50_us']}"
            f"{ratio(r, 'p50_us')} | {r['p99_us']}{ratio(r, 'p99_us')} | {r['p999_us']} |"
        )
    lines.append(f"<!-- bench:{args.what}:end -->")
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start_m, end_m = f"<!-- bench:{args.what}:start -->", f"<!-- bench:{args.what}:end -->"
    if start_m in text and end_m in text:
        text = text[: text.index(start_m)] + block + text[text.index(end_m) + len(end_m) :]
    else:
        text = text.rstrip() + f"\n\n## {args.what}\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)
