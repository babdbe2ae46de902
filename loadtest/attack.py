"""``python -m loadtest attack KIND``: attacks on the gateway's edge, next to witnesses.

Each run starts a gateway (its defaults, plus ``--gateway-arg``s) in front of plain
echo backends on loopback, measures a set of witness clients for ``--baseline``
seconds, then again for ``--duration`` seconds while an attacker from its own
loopback address (127.0.0.2) does one of:

  idle-flood   keeps ``--conns`` connections going that never finish their upgrade
               (each one that is closed or refused is opened again at once)
  ping-flood   one connection sending pings as fast as it can; reconnects when cut
  admin-flood  keeps ``--conns`` idle connections going to the admin port
  memory       one client, one thing at a time: a 1 MiB request head, 1 MiB frames
               into a backend that never reads, a firehose it never reads, a frame
               header claiming 2^62 bytes
  cpu-hog      a control, not an attack: the attacker's process only spins on one
               core, to show what sharing the machine alone costs the witnesses

The attacker runs in its own process (``memory`` in this one: it is slow on purpose).
Witnesses, from 127.0.0.1: ``--witnesses`` steady echo clients (a round trip every
50 ms each), a newcomer upgrading every 100 ms, an operator calling ``/healthz``
every 200 ms. One JSON line per attack: the witnesses' round-trip p50/p99,
newcomers served, operator calls answered, the gateway's RSS growth and
descriptors, its refusals, and what the attacker saw. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import multiprocessing
import os
import resource
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException

from loadtest.bench import cpu_s, rss_kib, wait_port
from loadtest.topology import free_port

__all__ = ["ATTACKS", "AttackConfig", "add_parser", "main", "run_attack"]

ATTACKS = ("idle-flood", "ping-flood", "admin-flood", "memory", "cpu-hog")
ATTACKER = "127.0.0.2"  # the attacker's own address: per-address limits apply to it alone
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PARTIAL_HEAD = b"GET /ws?key=idle HTTP/1.1\r\nHost: x\r\n"  # never finished
PING = b"\x89\x80\x00\x00\x00\x00"  # masked (zero key), empty
MIB = 1 << 20


def upgrade_head(key: str) -> bytes:
    ws_key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws?key={key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {ws_key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@dataclass
class AttackConfig:
    kind: str
    duration: float = 10.0
    baseline: float = 5.0
    witnesses: int = 20
    conns: int = 10_200
    gateway_args: list[str] = field(default_factory=list)
    gateway_fds: int = 0  # descriptor limit of the gateway process; 0: inherited
    workdir: Path | None = None


# ---------------------------------------------------------------------- witnesses


@dataclass
class Phase:
    name: str
    rtts: list[float] = field(default_factory=list)
    steady_errors: int = 0
    newcomers: int = 0
    newcomers_ok: int = 0
    newcomer_failures: Counter[str] = field(default_factory=Counter)
    operator: int = 0
    operator_ok: int = 0
    rss_kib: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        r = sorted(self.rtts)

        def pct(p: float) -> float | None:
            return round(r[min(len(r) - 1, int(p * len(r)))] * 1000, 2) if r else None

        return {
            "round_trips": len(r),
            "rtt_p50_ms": pct(0.50),
            "rtt_p99_ms": pct(0.99),
            "steady_errors": self.steady_errors,
            "newcomers": self.newcomers,
            "newcomers_ok": self.newcomers_ok,
            "newcomer_failures": dict(self.newcomer_failures),
            "operator": self.operator,
            "operator_ok": self.operator_ok,
            "rss_max_kib": max(self.rss_kib, default=0),
            "fds_max": max(self.fds, default=0),
        }


class Witnesses:
    """Well-behaved clients whose service is measured, phase by phase."""

    def __init__(
        self, url: str, keys: list[str], newcomer_keys: list[str], admin_url: str, pid: int
    ):
        self.url = url
        self.keys = keys
        self.newcomer_keys = newcomer_keys
        self.admin_url = admin_url
        self.pid = pid
        self.phase = Phase("warmup")
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.arriving: set[asyncio.Task[None]] = set()  # newcomers under way

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.steady(k)) for k in self.keys]
        self.tasks += [
            loop.create_task(self.newcomers()),
            loop.create_task(self.operator()),
            loop.create_task(self.sampler()),
        ]

    async def stop(self) -> None:
        self.stopping = True
        if self.arriving:  # each newcomer counts where it started: let it finish
            await asyncio.wait(self.arriving, timeout=12)
        for t in [*self.tasks, *self.arriving]:
            t.cancel()
        await asyncio.gather(*self.tasks, *self.arriving, return_exceptions=True)

    async def steady(self, key: str) -> None:
        payload = b"w" * 64
        while not self.stopping:
            try:
                async with connect(
                    f"{self.url}?key={key}", compression=None, ping_interval=None, open_timeout=5
                ) as ws:
                    while not self.stopping:
                        t0 = time.perf_counter()
                        await ws.send(payload)
                        await asyncio.wait_for(ws.recv(), 5)
                        self.phase.rtts.append(time.perf_counter() - t0)
                        await asyncio.sleep(0.05)
            except (OSError, TimeoutError, WebSocketException):
                self.phase.steady_errors += 1
                await asyncio.sleep(0.1)

    async def newcomers(self) -> None:
        n = 0
        while not self.stopping:
            n += 1
            key = self.newcomer_keys[n % len(self.newcomer_keys)]
            task = asyncio.get_running_loop().create_task(self.newcomer(key))
            self.arriving.add(task)
            task.add_done_callback(self.arriving.discard)
            await asyncio.sleep(0.1)

    async def newcomer(self, key: str) -> None:
        phase = self.phase
        phase.newcomers += 1
        try:
            async with connect(
                f"{self.url}?key={key}", compression=None, ping_interval=None, open_timeout=5
            ) as ws:
                await ws.send(b"hello")
                await asyncio.wait_for(ws.recv(), 5)
            phase.newcomers_ok += 1
        except InvalidStatus as exc:
            phase.newcomer_failures[str(exc.response.status_code)] += 1
        except (TimeoutError, InvalidHandshake) as exc:
            phase.newcomer_failures[type(exc).__name__] += 1
        except (OSError, WebSocketException) as exc:
            phase.newcomer_failures[type(exc).__name__] += 1

    async def operator(self) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while not self.stopping:
                phase = self.phase
                phase.operator += 1
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with s.get(f"{self.admin_url}/healthz") as r:
                        if r.status == 200:
                            phase.operator_ok += 1
                await asyncio.sleep(0.2)

    async def sampler(self) -> None:
        while not self.stopping:
            self.phase.rss_kib.append(rss_kib(self.pid))
            with contextlib.suppress(OSError):
                self.phase.fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- attackers


async def _open(port: int, source: str = ATTACKER) -> tuple[Any, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0), limit=MIB)


async def idle_flood(port: int, conns: int, until: float, data: bytes) -> dict[str, int]:
    """``conns`` connections at all times, each sending ``data`` and nothing more; one
    that is answered or closed is opened again at once."""
    stats: Counter[str] = Counter()
    gate = asyncio.Semaphore(256)  # connects in flight

    async def one() -> None:
        while time.monotonic() < until:
            async with gate:
                try:
                    r, w = await asyncio.wait_for(_open(port), 5)
                except (OSError, TimeoutError):
                    stats["connect_failed"] += 1
                    await asyncio.sleep(0.05)
                    continue
            stats["opened"] += 1
            try:
                if data:
                    w.write(data)
                answer = await asyncio.wait_for(r.read(64), max(until - time.monotonic(), 0))
            except TimeoutError:
                stats["held_to_the_end"] += 1
                answer = None
            except OSError:
                answer = b""
            w.close()
            if answer is None:
                return
            stats[answer[9:12].decode("latin-1") if answer else "closed"] += 1

    await asyncio.gather(*(one() for _ in range(conns)))
    return dict(stats)


async def ping_flood(port: int, key: str, until: float) -> dict[str, int]:
    stats: Counter[str] = Counter()
    batch = PING * 1000

    async def discard(r: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await r.read(MIB):
                pass

    while time.monotonic() < until:
        try:
            r, w = await asyncio.wait_for(_open(port), 5)
        except (OSError, TimeoutError):
            stats["connect_failed"] += 1
            await asyncio.sleep(0.05)
            continue
        reader: asyncio.Task[None] | None = None
        try:
            w.write(upgrade_head(key))
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            if not head.startswith(b"HTTP/1.1 101"):
                stats[head[9:12].decode("latin-1")] += 1
                await asyncio.sleep(0.05)
                continue
            stats["upgraded"] += 1
            reader = asyncio.get_running_loop().create_task(discard(r))
            while time.monotonic() < until and not reader.done():
                w.write(batch)
                await w.drain()
                stats["pings_into_the_socket"] += 1000
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            stats["cut"] += time.monotonic() < until
            w.close()
            if reader is not None:
                reader.cancel()
    return dict(stats)


def attacker_proc(
    kind: str, port: int, admin_port: int, conns: int, until_in: float, q: Any
) -> None:
    """The attacker's process (``until_in``: seconds from now)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def go() -> dict[str, int]:
        until = time.monotonic() + until_in
        if kind == "idle-flood":
            return await idle_flood(port, conns, until, PARTIAL_HEAD)
        if kind == "admin-flood":
            return await idle_flood(admin_port, conns, until, b"")
        if kind == "cpu-hog":
            spins = 0
            while time.monotonic() < until:
                spins += 1
            return {"spins": spins}
        return await ping_flood(port, "flood", until)

    q.put(uvloop.run(go()))


class Tarpit(asyncio.Protocol):
    """A backend that answers the upgrade and then never reads again."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf or self.transport is None:
            return
        key = b""
        for line in self.buf.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.transport.pause_reading()


async def memory_attack(
    port: int, keys: dict[str, str], seconds: float, witnesses: Witnesses
) -> dict[str, Any]:
    """One client, one thing at a time; the RSS is sampled during each (its own phase)."""
    out: dict[str, Any] = {}
    each = seconds / 4

    async def huge_head(until: float) -> None:
        while time.monotonic() < until:
            r, w = await _open(port)
            w.write(b"GET /ws?key=m HTTP/1.1\r\nX-Pad: " + b"a" * MIB)
            with contextlib.suppress(OSError):
                out["huge_head_answer"] = (await r.read(12)).decode("latin-1")
            w.close()

    async def upload(until: float) -> None:
        r, w = await _open(port)
        w.write(upgrade_head(keys["tarpit"]))
        await r.readuntil(b"\r\n\r\n")
        frame = b"\x82\xff" + (MIB).to_bytes(8, "big") + b"\x00" * 4 + b"u" * MIB
        sent = 0
        with contextlib.suppress(OSError, TimeoutError):
            while time.monotonic() < until:
                w.write(frame)
                await asyncio.wait_for(w.drain(), max(until - time.monotonic(), 0.01))
                sent += 1
        out["upload_mib_accepted"] = sent
        w.close()

    async def no_read(until: float) -> None:
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(ATTACKER, 0), limit=1024
        )
        w.write(upgrade_head(keys["flood"]))
        await r.readuntil(b"\r\n\r\n")
        await asyncio.sleep(max(until - time.monotonic(), 0))  # and never read
        w.close()

    async def big_frame(until: float) -> None:
        closes = 0
        while time.monotonic() < until:
            r, w = await _open(port)
            w.write(upgrade_head(keys["echo"]))
            await r.readuntil(b"\r\n\r\n")
            w.write(b"\x82\xff" + (1 << 62).to_bytes(8, "big") + b"\x00" * 4 + b"x" * 65536)
            with contextlib.suppress(OSError):
                if b"\x88\x02\x03\xf1" in await asyncio.wait_for(r.read(64), 5):
                    closes += 1  # 1009
            w.close()
        out["big_frame_closed_1009"] = closes

    steps: list[tuple[str, Callable[[float], Any]]] = [
        ("huge-head", huge_head),
        ("upload-to-tarpit", upload),
        ("never-read-firehose", no_read),
        ("frame-claiming-2^62", big_frame),
    ]
    phases = {}
    for name, step in steps:
        witnesses.phase = phases[name] = Phase(name)
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            await step(time.monotonic() + each)
    out["phases"] = phases
    return out


# ---------------------------------------------------------------------- the run


def _keys_for(backends: list[str], node: str, prefix: str, n: int) -> list[str]:
    from gateway.route_source import StaticDirectory

    d = StaticDirectory(backends)
    keys = (f"{prefix}{i}" for i in range(1_000_000))
    return [k for k in keys if (r := d.route(k)) and r.node == node][:n]


async def _gateway_counters(admin_url: str, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{admin_url}/v1/status", headers=headers) as r:
            out["rejected"] = (await r.json())["rejected"]
        async with s.get(f"{admin_url}/metrics", headers=headers) as r:
            for line in (await r.text()).splitlines():
                if line.startswith(
                    (
                        "gateway_frame_violations_total",
                        "gateway_handshakes_evicted_total",
                        "gateway_admin_dropped_total",
                    )
                ):
                    name, value = line.rsplit(" ", 1)
                    out[name] = int(float(value))
    return out


async def run_attack(cfg: AttackConfig) -> dict[str, Any]:
    """Start the gateway and backends, measure the witnesses alone, then under attack."""
    work = cfg.workdir or Path(tempfile.mkdtemp(prefix=f"attack-{cfg.kind}-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    tarpit_server: asyncio.Server | None = None
    token = secrets.token_hex(16)

    def spawn(args: list[str], log: str, preexec: Callable[[], None] | None = None) -> None:
        with (work / log).open("ab") as fh:
            procs.append(
                subprocess.Popen(
                    args,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=preexec,
                    env={**os.environ, "GATEWAY_ADMIN_TOKEN": token},
                )
            )

    try:
        echo_p = free_port()
        spawn([py, "-m", "loadtest.echo_server", f"127.0.0.1:{echo_p}"], "echo.log")
        backends = [f"127.0.0.1:{echo_p}"]
        if cfg.kind == "memory":
            hose_p = free_port()
            spawn([py, "-m", "loadtest.echo_server", f"127.0.0.1:{hose_p}", "--flood"], "hose.log")
            tarpit_server = await asyncio.get_running_loop().create_server(Tarpit, "127.0.0.1", 0)
            backends += [
                f"127.0.0.1:{hose_p}",
                f"127.0.0.1:{tarpit_server.sockets[0].getsockname()[1]}",
            ]
        gw_p, admin_p = free_port(), free_port()
        fds = cfg.gateway_fds

        def limit_fds() -> None:
            if fds:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fds, fds))

        spawn(
            [py, "-m", "gateway", "--listen", f"127.0.0.1:{gw_p}"]
            + ["--admin-listen", f"127.0.0.1:{admin_p}", "--state-dir", str(work / "gw")]
            + ["--log-level", "warning"]
            + [a for b in backends for a in ("--static-backend", b)]
            + cfg.gateway_args,
            "gateway.log",
            limit_fds,
        )
        gw = procs[-1]
        for port in (echo_p, gw_p, admin_p):
            await wait_port(port)
        echo = backends[0]
        wkeys = _keys_for(backends, echo, "w", cfg.witnesses)
        nkeys = _keys_for(backends, echo, "new:", 1000)
        admin_url = f"http://127.0.0.1:{admin_p}"
        wit = Witnesses(f"ws://127.0.0.1:{gw_p}/ws", wkeys, nkeys, admin_url, gw.pid)
        wit.start()
        await asyncio.sleep(0.5)  # connected
        base = wit.phase = Phase("baseline")
        cpu0, t0 = cpu_s(gw.pid), time.monotonic()
        await asyncio.sleep(cfg.baseline)
        cpu1, t1 = cpu_s(gw.pid), time.monotonic()
        attack = wit.phase = Phase("attack")
        result: dict[str, Any] = {"attack": cfg.kind, "gateway_args": cfg.gateway_args}
        if cfg.kind == "memory":
            keys = {
                "echo": echo,
                "flood": backends[1],
                "tarpit": backends[2],
            }
            keys = {k: _keys_for(backends, v, f"m{k}", 1)[0] for k, v in keys.items()}
            mem = await memory_attack(gw_p, keys, cfg.duration, wit)
            phases: dict[str, Phase] = mem.pop("phases")
            result["attacker"] = mem
            for ph in phases.values():
                attack.rtts += ph.rtts
                attack.steady_errors += ph.steady_errors
                attack.newcomers += ph.newcomers
                attack.newcomers_ok += ph.newcomers_ok
                attack.newcomer_failures += ph.newcomer_failures
                attack.operator += ph.operator
                attack.operator_ok += ph.operator_ok
                attack.rss_kib += ph.rss_kib
                attack.fds += ph.fds
            base_rss = max(base.rss_kib, default=0)
            result["rss_growth_mib_by_step"] = {
                n: round((max(ph.rss_kib, default=0) - base_rss) / 1024, 1)
                for n, ph in phases.items()
            }
        else:
            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            child = ctx.Process(
                target=attacker_proc,
                args=(cfg.kind, gw_p, admin_p, cfg.conns, cfg.duration, q),
            )
            child.start()
            loop = asyncio.get_running_loop()
            result["attacker"] = await loop.run_in_executor(None, q.get, True, cfg.duration + 60)
            await loop.run_in_executor(None, child.join, 10)
        cpu2, t2 = cpu_s(gw.pid), time.monotonic()
        await wit.stop()
        result["baseline"] = base.summary()
        result["during"] = attack.summary()
        result["baseline"]["gateway_cpu_pct"] = round(100 * (cpu1 - cpu0) / (t1 - t0))
        result["during"]["gateway_cpu_pct"] = round(100 * (cpu2 - cpu1) / (t2 - t1))
        result["gateway"] = await _gateway_counters(admin_url, token)
        b99, a99 = result["baseline"]["rtt_p99_ms"], result["during"]["rtt_p99_ms"]
        result["p99_ratio"] = round(a99 / b99, 2) if a99 and b99 else None
        result["rss_growth_mib"] = round(
            (max(attack.rss_kib, default=0) - max(base.rss_kib, default=0)) / 1024, 1
        )
        result["newcomers_served"] = (
            round(attack.newcomers_ok / attack.newcomers, 3) if attack.newcomers else None
        )
        result["operator_answered"] = (
            round(attack.operator_ok / attack.operator, 3) if attack.operator else None
        )
        result["workdir"] = str(work)
        return result
    finally:
        if tarpit_server is not None:
            tarpit_server.close()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def row(r: dict[str, Any]) -> str:
    """One line of docs/reliability.md's attack table."""
    b, d = r["baseline"], r["during"]
    return (
        f"| {r['attack']} | {b['rtt_p99_ms']} → {d['rtt_p99_ms']} ms ({r['p99_ratio']}×) "
        f"| {d['newcomers_ok']}/{d['newcomers']} | {d['operator_ok']}/{d['operator']} "
        f"| {d['steady_errors']} | {r['rss_growth_mib']} MiB | {d['fds_max']} "
        f"| {b['gateway_cpu_pct']} → {d['gateway_cpu_pct']} % |"
    )


def add_parser(sub: Any) -> None:
    a = sub.add_parser(
        "attack",
        help="attacks on the gateway's edge next to witness clients",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("kind", choices=[*ATTACKS, "all"])
    a.add_argument("--duration", type=float, default=10.0, help="seconds under attack")
    a.add_argument("--baseline", type=float, default=5.0, help="seconds measured before")
    a.add_argument("--witnesses", type=int, default=20, help="steady echo clients")
    a.add_argument("--conns", type=int, default=10_200, help="connections of the floods")
    a.add_argument(
        "--gateway-args",
        default="",
        help="extra gateway flags, one string (e.g. '--max-pending-per-ip 0' to see the "
        "attack without that defense)",
    )
    a.add_argument("--gateway-fds", type=int, default=0, help="the gateway's descriptor limit")


def main(args: argparse.Namespace) -> int:
    kinds = list(ATTACKS) if args.kind == "all" else [args.kind]
    rows = []
    for kind in kinds:
        cfg = AttackConfig(
            kind=kind,
            duration=args.duration,
            baseline=args.baseline,
            witnesses=args.witnesses,
            conns=args.conns,
            gateway_args=shlex.split(args.gateway_args),
            gateway_fds=args.gateway_fds,
        )
        r = uvloop.run(run_attack(cfg))
        print(orjson.dumps(r).decode(), flush=True)
        rows.append(row(r))
    print(
        "\n| attack | witness p99, before → during | newcomers served | operator calls "
        "| steady-client errors | gateway RSS growth | gateway descriptors | gateway CPU |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))
    return 0
