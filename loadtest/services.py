"""Real Redis and etcd servers for tests and cluster topologies, started on free ports.

The binaries come from Debian's ``redis-server`` and ``etcd-server`` packages
(``scripts/system-deps.sh`` installs them); each server here is a private
instance in a folder of its own, never the system service, and stops with the
test or topology that started it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EtcdCluster", "RedisServer", "missing", "wait_tcp"]


def missing(binary: str) -> str | None:
    """Why a service cannot be started here (None if it can)."""
    if shutil.which(binary) is None:
        return f"{binary} is not installed (scripts/system-deps.sh installs it as root)"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_tcp(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


@dataclass
class RedisServer:
    """One redis-server; ``appendfsync`` always by default: an acknowledged write survives
    a kill -9 of Redis (what write-through durability needs)."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    appendfsync: str = "always"
    wrap: list[str] = field(default_factory=list)  # a command prefix: where it runs
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                *self.wrap,
                "redis-server",
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_tcp(self.host, self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class EtcdCluster:
    """``size`` etcd members on one host (each its own folder and ports)."""

    workdir: Path
    size: int = 1
    host: str = "127.0.0.1"
    hosts: list[str] = field(default_factory=list)  # one address per member, if given
    wrappers: list[list[str]] = field(default_factory=list)  # per member: where it runs
    fixed_ports: bool = False  # 2379/2380 on every member (each on a host of its own)
    tls: tuple[Path, Path] | None = None  # (certificate, key): clients speak https
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)
    peer_ports: list[int] = field(default_factory=list)

    def member_host(self, i: int) -> str:
        return self.hosts[i] if self.hosts else self.host

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.member_host(i)}:{p}" for i, p in enumerate(self.client_ports)]

    def _args(self, i: int, state: str) -> list[str]:
        h = self.member_host(i)
        cluster = ",".join(
            f"m{j}=http://{self.member_host(j)}:{self.peer_ports[j]}" for j in range(self.size)
        )
        scheme = "https" if self.tls else "http"
        tls = ["--cert-file", str(self.tls[0]), "--key-file", str(self.tls[1])] if self.tls else []
        return [
            *(self.wrappers[i] if self.wrappers else []),
            "etcd",
            *tls,
            "--name",
            f"m{i}",
            "--data-dir",
            str(self.workdir / f"m{i}"),
            "--listen-client-urls",
            f"{scheme}://{h}:{self.client_ports[i]}",
            "--advertise-client-urls",
            f"{scheme}://{h}:{self.client_ports[i]}",
            "--listen-peer-urls",
            f"http://{h}:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls",
            f"http://{h}:{self.peer_ports[i]}",
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "anchorage",
            # Old revisions go after 5 minutes: the directory is rewritten whole on every
            # change, and history kept forever would fill etcd's quota.
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "5m",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "500",
        ]

    def start(self) -> EtcdCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.fixed_ports:
            self.client_ports, self.peer_ports = [2379] * self.size, [2380] * self.size
        elif self.client_ports:  # given: the peers' ports are picked
            self.peer_ports = [free_port() for _ in range(self.size)]
        else:
            self.client_ports = [free_port() for _ in range(self.size)]
            self.peer_ports = [free_port() for _ in range(self.size)]
        self.procs = [None] * self.size
        for i in range(self.size):
            self.start_member(i, "new")
        for i in range(self.size):
            wait_tcp(self.member_host(i), self.client_ports[i], timeout=30)
        return self

    def start_member(self, i: int, state: str = "existing") -> None:
        log = (self.workdir / f"m{i}.log").open("ab")
        self.procs[i] = subprocess.Popen(
            self._args(i, state), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill_member(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
                if p.poll() is None:
                    p.kill()
