"""The backend's /metrics: served on its own port, counts the node's work, times resumes;
the reference in docs/backend.md is exactly what it exports."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import ClientSession
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from backend.apps.counter import CounterApp
from backend.config import BackendConfig
from backend.load import LoadMeter
from backend.node import Node
from backend.server import BackendServer
from backend.store import MemoryStore
from tests.backend.test_server import HELLO, server
from tests.gateway.test_metrics import ROOT, documented, exported, samples

pytestmark = pytest.mark.timeout(30)


async def scrape(url: str) -> tuple[str, str]:
    http = url.replace("ws://", "http://").removesuffix("/ws") + "/metrics"
    async with ClientSession() as s, s.get(http) as r:
        assert r.status == 200
        return r.headers["Content-Type"], await r.text()


async def test_metrics_count_messages_and_time_a_resume(tmp_path):
    async with server(tmp_path) as (url, _node):
        async with connect(f"{url}?key=k") as ws:
            await ws.send(orjson.dumps(HELLO).decode())
            sid = orjson.loads(await ws.recv())["sid"]
            for seq in (1, 2, 1):  # the second seq 1 is a duplicate
                await ws.send(f'{{"t":"msg","seq":{seq},"ack":0,"d":{{"n":1}}}}')
            await ws.recv()
            await ws.recv()
            await ws.close(1001)  # going away: the session stays resumable (1000 would end it)
        async with connect(f"{url}?key=k") as ws:
            await ws.send(orjson.dumps({"t": "hello", "sid": sid, "last": 2}).decode())
            assert orjson.loads(await ws.recv())["resumed"] is True
            content_type, text = await scrape(url)
        v = samples(text)
        assert content_type.startswith("text/plain; version=")
        assert v["backend_messages_total"] == 2
        assert v["backend_duplicates_total"] == 1
        assert v['backend_sessions_attached_total{outcome="resumed"}'] == 1
        assert v['backend_sessions_attached_total{outcome="not_resumed"}'] == 1
        assert v["backend_resume_seconds_count"] == 1
        assert v["backend_connections"] == 1 and v["backend_sessions"] == 1


async def test_refused_upgrades_are_counted_by_reason(tmp_path):
    async with server(tmp_path) as (url, _node):
        with pytest.raises(InvalidStatus):
            await connect(url)  # no key: 400
        _, text = await scrape(url)
        assert samples(text)['backend_refused_upgrades_total{reason="bad_request"}'] == 1


def test_every_documented_metric_is_exported_and_every_exported_one_documented():
    node = Node(
        CounterApp(), MemoryStore(), LoadMeter(1e6), BackendConfig(node_id="n", direct=True)
    )
    srv = BackendServer(node)  # nothing depends on traffic for a family to appear
    assert documented(ROOT / "docs" / "backend.md") == exported(srv.metrics.registry)
