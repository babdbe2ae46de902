"""A private etcd for the tests that need one (``loadtest.services``), and in-process
gateways and nodes wired to it. Each test uses its own key prefix."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest

from backend.apps.counter import CounterApp
from backend.config import BackendConfig
from backend.control_agent import ControlAgent
from backend.etcd_link import EtcdLink
from backend.load import LoadMeter
from backend.node import Node
from backend.store import MemoryStore
from clientlib.io.etcd_transport import AiohttpTransport
from clientlib.kernel.etcd import EtcdClient, EtcdUnavailable
from clientlib.kernel.etcd_layout import Layout
from loadtest.services import EtcdCluster, missing

needs_etcd = pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd")))
_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def layout() -> Layout:
    return Layout(f"/t{next(_prefixes)}-{int(time.time() * 1000) % 10**8}")


class CuttableTransport(AiohttpTransport):
    """The real transport, with a switch that cuts this process off from etcd."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = False

    async def call(self, endpoint, path, body, timeout, headers):
        if self.cut:
            await asyncio.sleep(min(timeout, 0.05))
            raise EtcdUnavailable("cut off (test)")
        return await super().call(endpoint, path, body, timeout, headers)

    async def stream(self, endpoint, path, body, headers):
        if self.cut:
            raise EtcdUnavailable("cut off (test)")
        async for chunk in super().stream(endpoint, path, body, headers):
            if self.cut:
                raise EtcdUnavailable("cut off (test)")
            yield chunk


def client(cluster: EtcdCluster) -> tuple[EtcdClient, CuttableTransport]:
    t = CuttableTransport()
    return EtcdClient(t, cluster.endpoints, sleep=asyncio.sleep), t


def etcd_node(
    cluster: EtcdCluster, layout: Layout, node_id: str, *, lease_s: int = 2
) -> tuple[EtcdLink, CuttableTransport]:
    node = Node(
        CounterApp(), MemoryStore(), LoadMeter(1000.0), BackendConfig(node_id=node_id, direct=True)
    )
    agent = ControlAgent(node, node.meter, advertise=("127.0.0.1", 1))
    c, t = client(cluster)
    return EtcdLink(agent, c, layout, lease_s=lease_s), t


async def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait for ``cond``; the seconds it took. Fails after ``timeout`` naming ``what``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0
