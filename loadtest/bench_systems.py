"""The systems the benchmarks compare, each started as its own process.

Relay: the echo backends reached directly, through our gateway (``--workers N``),
through nginx (``hash $arg_key consistent``, N ``worker_processes``), through a
frame-by-frame websockets relay, through a bare splice on uvloop (the floor of
any Python relay: :mod:`loadtest.splice_relay`), or through the gateway of another checkout
(``baseline``: the same Python, run from that directory, so ``python -m gateway``
imports its code). Backend: ``python -m backend echo`` against a bare websockets
echo, or against another checkout's backend.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from loadtest.bench_load import start
from loadtest.topology import free_port

__all__ = [
    "Spec",
    "System",
    "consecutive_free_ports",
    "start_backend_system",
    "start_system",
]

# Every benchmark client comes from 127.0.0.1: the gateway's per-address limits are off.
ONE_ADDRESS = ["--max-conns-per-ip", "0", "--max-pending-per-ip", "0"]

NGINX_CONF = """
worker_processes {workers};
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
    listen 127.0.0.1:{port} backlog=4096{reuseport};
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


@dataclass(frozen=True)
class Spec:
    """One system to measure: its kind, how many processes serve, and its row's name."""

    kind: str  # direct | gateway | nginx | naive-relay | baseline | backend-echo | …
    workers: int = 1
    label: str = ""
    durability: str = ""  # backend: the durability mode ("": the backend's default)
    per_key: int = 0  # backend: sessions per routing key (0: one key per connection)

    @property
    def name(self) -> str:
        return self.label or self.kind


@dataclass
class System:
    name: str
    url: str
    port: int
    proc: subprocess.Popen[bytes] | None  # the process whose CPU and memory are measured


def consecutive_free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports (a gateway with ``--workers n`` serves its
    admin API on ``admin_listen``'s port + i)."""
    for _ in range(100):
        base = free_port()
        socks: list[socket.socket] = []
        try:
            for i in range(1, n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


@cache
def known_flags(module: str, cwd: str | None) -> frozenset[str]:
    """The flags ``python -m module`` accepts in checkout ``cwd`` (an older one may lack some)."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return frozenset(re.findall(r"--[a-z][a-z-]*", out))


def keep_known(args: list[str], module: str, cwd: Path | None) -> list[str]:
    """``args`` (flag, value pairs) without the flags that checkout does not know."""
    known = known_flags(module, str(cwd) if cwd else None)
    out: list[str] = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag in known:
            out += [flag, value]
    return out


def nginx_exe() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def start_system(
    spec: Spec,
    backends: list[str],
    workdir: Path,
    baseline: Path | None = None,
    *,
    per_address_limits: bool = False,
) -> System | None:
    port = free_port()
    py = sys.executable
    url = f"ws://127.0.0.1:{port}/ws"
    if spec.kind == "direct":
        p0 = int(backends[0].rsplit(":", 1)[1])
        return System(spec.name, f"ws://{backends[0]}/ws", p0, None)
    if spec.kind in ("gateway", "baseline"):
        cwd = baseline if spec.kind == "baseline" else None
        flags = [
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{consecutive_free_ports(spec.workers)}",
            "--log-level",
            "warning",
            "--state-dir",
            str(workdir / f"{spec.kind}-state"),
            *([] if per_address_limits else ONE_ADDRESS),
        ]
        if spec.workers > 1:
            flags += ["--workers", str(spec.workers)]
        for b in backends:
            flags += ["--static-backend", b]
        if cwd is not None:
            flags = keep_known(flags, "gateway", cwd)
        proc = start([py, "-m", "gateway", *flags], workdir / f"{spec.kind}.log", cwd=cwd)
    elif spec.kind == "nginx":
        exe = nginx_exe()
        if exe is None:
            print(
                "bench: nginx not found, skipped (apt-get install nginx-light to include it)",
                file=sys.stderr,
            )
            return None
        d = workdir / f"nginx-{spec.workers}"
        d.mkdir(exist_ok=True)
        servers = " ".join(f"server {b};" for b in backends)
        conf = NGINX_CONF.format(
            dir=d,
            servers=servers,
            port=port,
            workers=spec.workers,
            reuseport=" reuseport" if spec.workers > 1 else "",
        )
        (d / "nginx.conf").write_text(conf)
        proc = start([exe, "-p", str(d), "-c", str(d / "nginx.conf")], workdir / "nginx.log")
    elif spec.kind in ("naive-relay", "splice"):
        module = {"naive-relay": "loadtest.naive_relay", "splice": "loadtest.splice_relay"}
        args = [py, "-m", module[spec.kind], "--listen", f"127.0.0.1:{port}"]
        for b in backends:
            args += ["--backend", b]
        proc = start(args, workdir / f"{spec.kind}.log")
    else:
        raise ValueError(spec.kind)
    return System(spec.name, url, port, proc)


def start_backend_system(spec: Spec, work: Path, baseline: Path | None = None) -> System:
    port = free_port()
    py = sys.executable
    if spec.kind == "bare-websockets":
        proc = start([py, "-m", "loadtest.echo_server", f"127.0.0.1:{port}"], work / "bare.log")
    else:
        cwd = baseline if spec.kind == "baseline" else None
        flags = [
            "--listen",
            f"127.0.0.1:{port}",
            "--store",
            # A store of its own: the node id is its address, new at each start, and a
            # store written by another node id would refuse it the keys.
            str(work / f"{spec.kind}-{port}-store.db"),
            "--direct",
            "on",
            "--log-level",
            "warning",
        ]
        if spec.durability:
            flags += ["--durability", spec.durability]
        if cwd is not None:
            flags = keep_known(flags, "backend", cwd)
        proc = start([py, "-m", "backend", "echo", *flags], work / f"{spec.kind}.log", cwd=cwd)
    return System(spec.name, f"ws://127.0.0.1:{port}/ws", port, proc)
