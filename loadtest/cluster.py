"""A cluster on simulated hosts: 3 etcd members, several gateways, backends, Redis.

**Hosts.** Each process runs on a host of its own: a network namespace
(``ip netns``) with one address, ``10.77.0.N/24`` on a veth whose other end is
on a bridge in a "switch" namespace. The driver (this process and its client
workers) runs on a host too (the ``client`` namespace it re-executed itself in:
see :mod:`loadtest.cluster_faults`). Nothing touches the machine's own
namespace, and a fault is a rule in one host's own nftables (a partition: drop
what goes to or comes from some addresses).

**Fallback.** Where namespaces cannot be made (no root, no ``ip``), every host
is an address of its own on the loopback (``127.0.1.N``): the same processes,
the same ports, kills work, partitions do not (they are skipped and said so).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from clientlib.kernel.credentials import node_credential
from loadtest.services import EtcdCluster, RedisServer
from loadtest.topology import Proc

__all__ = ["ClusterTopology", "Hosts", "namespaces_missing"]

SUBNET = "10.77.0"


def namespaces_missing() -> str | None:
    """Why hosts cannot be namespaces here (None if they can)."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 nftables)"
    return None


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@dataclass
class Hosts:
    """Named hosts, each an address (and, with namespaces, a namespace)."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    netns: bool = True
    addrs: dict[str, str] = field(default_factory=dict)
    ns: dict[str, str] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"anc{self.tag}-sw"

    def make_switch(self) -> None:
        if not self.netns:
            return
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")

    def add(self, name: str) -> str:
        """A new host; its address."""
        n = len(self.addrs) + 1
        if not self.netns:
            self.addrs[name] = f"127.0.1.{n}"
            return self.addrs[name]
        ns = f"anc{self.tag}-{name}"
        addr = f"{SUBNET}.{n}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Both ends are made where they belong: nothing appears in this namespace.
        port = f"anc{self.tag}v{n}"
        sh(
            "ip",
            "-n",
            self.switch,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            ns,
        )
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        self.addrs[name], self.ns[name] = addr, ns
        return addr

    def wrap(self, name: str) -> list[str]:
        """The command prefix that runs a program on host ``name``."""
        return ["ip", "netns", "exec", self.ns[name]] if self.netns else []

    def partition(self, name: str, peers: list[str]) -> None:
        """Host ``name`` can no longer exchange packets with ``peers`` (addresses)."""
        if not self.netns:
            raise RuntimeError("partitions need network namespaces")
        ns = ["ip", "netns", "exec", self.ns[name]]
        sh(*ns, "nft", "add", "table", "inet", "cut")
        for chain, hook in (("in", "input"), ("out", "output")):
            sh(
                *ns,
                *["nft", "add", "chain", "inet", "cut", chain],
                f"{{ type filter hook {hook} priority 0 ; policy accept ; }}",
            )
        peer_set = "{ " + ", ".join(peers) + " }"
        sh(*ns, "nft", "add", "rule", "inet", "cut", "in", "ip", "saddr", peer_set, "drop")
        sh(*ns, "nft", "add", "rule", "inet", "cut", "out", "ip", "daddr", peer_set, "drop")

    def heal(self, name: str) -> None:
        if self.netns:
            subprocess.run(
                ["ip", "netns", "exec", self.ns[name], "nft", "delete", "table", "inet", "cut"],
                capture_output=True,
            )

    def adopt_client(self) -> None:
        """In the process re-executed on the ``client`` host: that host exists already."""
        self.addrs["client"], self.ns["client"] = f"{SUBNET}.1", f"anc{self.tag}-client"

    def remove_all(self) -> None:
        """Every namespace of this tag, whoever made it."""
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        names = {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}
        for ns in sorted(n for n in names if n.startswith(f"anc{self.tag}-")):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def on_client_host(argv: list[str], tag_flag: str = "--tag") -> int | None:
    """Run ``python -m loadtest ARGV --tag T`` on a new ``client`` host (a namespace on a
    new switch), wait for it and remove every host it made; None if no namespace can be
    made here (the caller runs on loopback addresses instead, and says so)."""
    why = namespaces_missing()
    hosts = Hosts()
    if why is None:
        try:
            hosts.make_switch()
            hosts.add("client")
        except subprocess.CalledProcessError as exc:
            why = f"cannot make network namespaces here: {exc.stderr!r}"
            hosts.remove_all()
    if why is not None:
        print(f"loadtest: {why}; hosts are loopback addresses, no partitions", file=sys.stderr)
        return None
    cmd = [*hosts.wrap("client"), sys.executable, "-m", "loadtest", *argv, tag_flag, hosts.tag]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait()
    finally:
        hosts.remove_all()


@dataclass
class ClusterTopology:
    workdir: Path
    hosts: Hosts
    gateways: int = 3
    backends: int = 3
    etcd_members: int = 3
    app: str = "counter"
    capacity: float | None = 1000.0  # None: the backends estimate their own
    service_times: dict[str, float] = field(default_factory=dict)  # node → µs
    durability: str = "write-through"
    rebalance: bool = True
    election_lease_s: int = 2
    node_lease_s: int = 3
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd: EtcdCluster | None = None
    redis: RedisServer | None = None
    gws: dict[str, Proc] = field(default_factory=dict)
    nodes: dict[str, Proc] = field(default_factory=dict)
    gateway_port: int = 9000
    admin_port: int = 9090
    backend_port: int = 9101

    # ------------------------------------------------------------------ addresses

    @property
    def urls(self) -> list[str]:
        return [f"ws://{self.hosts.addrs[g]}:{self.gateway_port}/ws" for g in self.gws]

    @property
    def url(self) -> str:
        return self.urls[0]

    def admin_url(self, gw: str) -> str:
        return f"http://{self.hosts.addrs[gw]}:{self.admin_port}"

    @property
    def store(self) -> str:
        assert self.redis is not None
        return self.redis.url

    def etcd_addrs(self) -> list[str]:
        return [self.hosts.addrs[f"etcd{i}"] for i in range(self.etcd_members)]

    # ------------------------------------------------------------------ starting

    def start_services(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        h = self.hosts
        for i in range(self.etcd_members):
            h.add(f"etcd{i}")
        self.etcd = EtcdCluster(
            self.workdir / "etcd",
            size=self.etcd_members,
            hosts=self.etcd_addrs(),
            wrappers=[h.wrap(f"etcd{i}") for i in range(self.etcd_members)],
            fixed_ports=True,
        ).start()
        h.add("redis")
        self.redis = RedisServer(
            self.workdir / "redis", host=h.addrs["redis"], port=6379, wrap=h.wrap("redis")
        ).start()

    def start_gateway(self, name: str) -> None:
        h = self.hosts
        if name not in h.addrs:
            h.add(name)
        addr = h.addrs[name]
        assert self.etcd is not None
        p = Proc(
            name,
            [
                *["-m", "gateway", "--listen", f"{addr}:{self.gateway_port}"],
                *["--admin-listen", f"{addr}:{self.admin_port}"],
                *["--etcd", ",".join(self.etcd.endpoints), "--gateway-id", name],
                *["--election-lease-s", str(self.election_lease_s)],
                *["--state-dir", str(self.workdir / name)],
                *["--rebalance", "on" if self.rebalance else "off"],
                *["--max-conns-per-ip", "0", "--max-pending-per-ip", "0"],
            ],
            self.workdir / f"{name}.log",
            env={"GATEWAY_ADMIN_TOKEN": self.admin_token, "GATEWAY_CONTROL_SECRET": self.secret},
            wrap=h.wrap(name),
        )
        p.start()
        self.gws[name] = p

    def start_backend(self, name: str) -> None:
        h = self.hosts
        if name not in h.addrs:
            h.add(name)
        assert self.etcd is not None
        p = Proc(
            name,
            [
                *["-m", "backend", self.app, "--listen", f"{h.addrs[name]}:{self.backend_port}"],
                *["--node-id", name],
                *(["--capacity", str(self.capacity)] if self.capacity is not None else []),
                *(
                    ["--service-time-us", str(self.service_times[name])]
                    if name in self.service_times
                    else []
                ),
                *["--store", self.store, "--durability", self.durability],
                *["--etcd", ",".join(self.etcd.endpoints)],
                *["--etcd-lease-s", str(self.node_lease_s)],
            ],
            self.workdir / f"{name}.log",
            env={"BACKEND_CREDENTIAL": node_credential(self.secret, name)},
            wrap=h.wrap(name),
        )
        p.start()
        self.nodes[name] = p

    async def start(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.start_services)
        for i in range(1, self.gateways + 1):
            self.start_gateway(f"gw{i}")
        for i in range(1, self.backends + 1):
            self.start_backend(f"node-{i}")
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while True:
                for p in [*self.gws.values(), *self.nodes.values()]:
                    if not p.alive:
                        raise RuntimeError(f"{p.name} exited at start; see {p.log}")
                with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                    st = await self.admin_get(s, "/v1/status")
                    live = [n for n in st.get("nodes", {}).values() if n.get("alive")]
                    ready = [await self.ready(s, g) for g in self.gws]
                    if len(live) >= len(self.nodes) and all(ready):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"cluster not ready after {timeout}s; logs in {self.workdir}"
                    )
                await asyncio.sleep(0.3)

    # ------------------------------------------------------------------ admin

    async def ready(self, s: aiohttp.ClientSession, gw: str) -> bool:
        try:
            async with s.get(
                self.admin_url(gw) + "/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def get(self, s: aiohttp.ClientSession, gw: str, path: str) -> dict[str, Any]:
        async with s.get(
            self.admin_url(gw) + path,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=aiohttp.ClientTimeout(total=3),
        ) as r:
            r.raise_for_status()
            out: dict[str, Any] = orjson.loads(await r.read())
            return out

    async def leader(self, s: aiohttp.ClientSession) -> str | None:
        """The gateway that says it leads, if one does (and is reachable)."""
        for g, p in self.gws.items():
            if not p.alive:
                continue
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                if (await self.get(s, g, "/v1/status")).get("leading"):
                    return g
        return None

    async def admin_get(self, s: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        """Ask the leader (the admin view with loads and moves), else any live gateway."""
        g = await self.leader(s) or next(g for g, p in self.gws.items() if p.alive)
        return await self.get(s, g, path)

    async def fence_counts(self) -> dict[str, int]:
        """The store's fenced writes so far: accepted and refused."""
        from backend.redis_store import RedisStore

        def read() -> dict[str, int]:
            rs = RedisStore(self.store, timeout_s=2.0)
            try:
                return rs.fence_counts()
            finally:
                rs.close()

        return await asyncio.get_running_loop().run_in_executor(None, read)

    # ------------------------------------------------------------------ stopping

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        (self.nodes.get(name) or self.gws[name]).signal(sig)

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_processes(timeout)
        self.stop_services()

    def stop_processes(self, timeout: float = 15.0) -> None:
        """SIGTERM the backends (they flush and leave), then the gateways."""
        for p in self.nodes.values():
            p.signal(signal.SIGTERM)
        for p in self.nodes.values():
            p.wait(timeout)
        for p in self.gws.values():
            p.signal(signal.SIGTERM)
        for p in self.gws.values():
            p.wait(timeout)
        for proc in [*self.gws.values(), *self.nodes.values()]:
            proc.close()

    def stop_services(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.etcd is not None:
            self.etcd.stop()
