"""A local topology of real processes: one gateway with its control plane, N backends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from clientlib.kernel.credentials import node_credential


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    wrap: list[str] = field(default_factory=list)  # e.g. ip netns exec NS: where it runs
    popen: subprocess.Popen[bytes] | None = None
    _fh: IO[bytes] | None = None

    def start(self) -> None:
        self._fh = self.log.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.popen = subprocess.Popen(
            [*self.wrap, sys.executable, *self.args],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


@dataclass
class Topology:
    """Gateway + backends (counter app by default) on loopback, logs under ``workdir``."""

    workdir: Path
    backends: int = 3
    app: str = "counter"
    capacity: float | None = 1000.0  # None: the backends estimate their own
    durability: str = "handoff"
    rebalance: bool = True
    # node name → service time (µs): a finite capacity of its own (backend service_time_us)
    service_times: dict[str, float] = field(default_factory=dict)
    rebalance_tolerance: float | None = None  # the gateway's (None: its default)
    host: str = "127.0.0.1"
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    gateway_port: int = 0
    admin_port: int = 0
    gateway: Proc | None = None
    nodes: dict[str, Proc] = field(default_factory=dict)
    node_ports: dict[str, int] = field(default_factory=dict)
    extra_gateway_args: list[str] = field(default_factory=list)
    extra_backend_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.gateway_port}/ws"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def store(self) -> Path:
        return self.workdir / "store.db"

    def start_gateway(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gateway_port = self.gateway_port or free_port()
        self.admin_port = self.admin_port or free_port()
        self.gateway = Proc(
            "gateway",
            [
                "-m",
                "gateway",
                "--listen",
                f"{self.host}:{self.gateway_port}",
                "--admin-listen",
                f"{self.host}:{self.admin_port}",
                "--state-dir",
                str(self.workdir / "gateway"),
                "--rebalance",
                "on" if self.rebalance else "off",
                *(
                    ["--rebalance-tolerance", str(self.rebalance_tolerance)]
                    if self.rebalance_tolerance is not None
                    else []
                ),
                # All simulated clients share one address: per-address limits are for
                # real clients (docs/security.md).
                "--max-conns-per-ip",
                "0",
                "--max-pending-per-ip",
                "0",
                *self.extra_gateway_args,
            ],
            self.workdir / "gateway.log",
            # Secrets by environment: not visible in ps.
            env={"GATEWAY_ADMIN_TOKEN": self.admin_token, "GATEWAY_CONTROL_SECRET": self.secret},
        )
        self.gateway.start()

    def start_backend(self, name: str) -> None:
        port = self.node_ports.get(name) or free_port()
        self.node_ports[name] = port
        p = Proc(
            name,
            [
                "-m",
                "backend",
                self.app,
                "--listen",
                f"{self.host}:{port}",
                "--node-id",
                name,
                *(["--capacity", str(self.capacity)] if self.capacity is not None else []),
                *(
                    ["--service-time-us", str(self.service_times[name])]
                    if name in self.service_times
                    else []
                ),
                "--store",
                str(self.store),
                "--durability",
                self.durability,
                "--control",
                f"ws://{self.host}:{self.admin_port}/v1/control",
                *self.extra_backend_args,
            ],
            self.workdir / f"{name}.log",
            # The node's own credential, by environment (not visible in ps).
            env={"BACKEND_CREDENTIAL": node_credential(self.secret, name)},
        )
        p.start()
        self.nodes[name] = p

    async def start(self, timeout: float = 30.0) -> None:
        self.start_gateway()
        for i in range(1, self.backends + 1):
            self.start_backend(f"node-{i}")
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                for p in [self.gateway, *self.nodes.values()]:
                    if p is not None and not p.alive:
                        raise RuntimeError(f"{p.name} exited at start; see {p.log}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{self.admin_url}/readyz") as r:
                        if r.status == 200:
                            st = await self.status(s)
                            live = [n for n in st.get("nodes", {}).values() if n.get("alive")]
                            if len(live) >= len([p for p in self.nodes.values() if p.alive]):
                                return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"topology not ready after {timeout}s; logs in {self.workdir}"
                    )
                await asyncio.sleep(0.2)

    async def status(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        return await self.admin_get(s, "/v1/status")

    async def admin_get(self, s: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        async with s.get(
            f"{self.admin_url}{path}", headers={"Authorization": f"Bearer {self.admin_token}"}
        ) as r:
            r.raise_for_status()
            out: dict[str, Any] = orjson.loads(await r.read())
            return out

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.nodes[name].signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM everything (backends first: they flush their state), then wait."""
        for p in self.nodes.values():
            p.signal(signal.SIGTERM)
        for p in self.nodes.values():
            p.wait(timeout)
        if self.gateway is not None:
            self.gateway.signal(signal.SIGTERM)
            self.gateway.wait(timeout)
        for proc in [self.gateway, *self.nodes.values()]:
            if proc is not None:
                proc.close()
