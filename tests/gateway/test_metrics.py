"""The gateway's metrics: live traffic counters, histograms, the control plane's gauges,
and the reference in docs/gateway.md (every documented metric exported, and back)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from websockets.asyncio.client import connect

from clientlib.kernel import control_protocol as cp
from gateway.controlplane.controller import Controller
from gateway.controlplane.core import CoreConfig
from gateway.controlplane.directory import EmbeddedDirectory, MemoryStorage
from gateway.controlplane.planner import Move
from gateway.metrics import GatewayMetrics
from tests.gateway.controlplane.test_core import Clock, load, register
from tests.gateway.gwproc import gateway_process, plain_server

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).parents[2]


def samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def exported(registry: CollectorRegistry) -> set[str]:
    """Metric family names (a counter's without its ``_total``)."""
    return {family.name for family in registry.collect()}


def documented(doc: Path) -> set[str]:
    """Metric names in the doc's metrics table: rows like | `name` | type | labels | meaning |."""
    text = doc.read_text()
    table = text[text.index("| metric | type | labels | meaning |") :]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        names |= set(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return names


def conn(c2b: tuple[int, int], b2c: tuple[int, int]) -> SimpleNamespace:
    return SimpleNamespace(
        c2b=SimpleNamespace(frames=c2b[0], bytes=c2b[1]),
        b2c=SimpleNamespace(frames=b2c[0], bytes=b2c[1]),
    )


def test_traffic_counters_publish_growth_of_live_and_closed_connections():
    m = GatewayMetrics()
    a, b = conn((1, 10), (2, 20)), conn((3, 30), (0, 0))
    m.traffic.publish([a, b])
    v = samples(generate_latest(m.registry).decode())
    assert v['gateway_frames_total{dir="c2b"}'] == 4 and v['gateway_bytes_total{dir="b2c"}'] == 20
    a.c2b.frames, a.c2b.bytes = 5, 50  # a grew
    m.traffic.closed(b)  # b left: its counts stay counted, once
    m.traffic.publish([a])
    v = samples(generate_latest(m.registry).decode())
    assert v['gateway_frames_total{dir="c2b"}'] == 8
    assert v['gateway_bytes_total{dir="c2b"}'] == 80
    m.traffic.publish([a])  # nothing new: nothing added
    assert samples(generate_latest(m.registry).decode())['gateway_frames_total{dir="c2b"}'] == 8


async def test_counters_move_while_one_long_connection_lives(tmp_path):
    async with (
        plain_server() as backend,
        gateway_process(tmp_path, "--static-backend", backend) as gw,
        connect(gw.url(), compression=None) as ws,
    ):
        seen = []
        for round_ in range(2):
            for _ in range(10):
                await ws.send(b"x" * 100)
                await ws.recv()
            status, text = await gw.admin("GET", "/metrics")
            assert status == 200, round_
            seen.append(samples(text))
        first, second = seen
        for d in ("c2b", "b2c"):
            assert first[f'gateway_frames_total{{dir="{d}"}}'] >= 10
            assert (
                second[f'gateway_frames_total{{dir="{d}"}}']
                >= first[f'gateway_frames_total{{dir="{d}"}}'] + 10
            )
            assert (
                second[f'gateway_bytes_total{{dir="{d}"}}']
                > first[f'gateway_bytes_total{{dir="{d}"}}']
            )
        assert second["gateway_relaying"] == 1
        assert second["gateway_upgrade_seconds_count"] == 1
        assert second["gateway_backend_connect_seconds_count"] == 1


def control_plane(metrics: GatewayMetrics) -> tuple[Controller, Clock]:
    clock = Clock()
    d = EmbeddedDirectory(MemoryStorage(), lease_s=3.0, clock=clock)
    ctl = Controller(d, "s" * 32, metrics, config=CoreConfig(rebalance=False))
    ctl.core.wall = clock
    return ctl, clock


async def test_control_plane_gauges_and_move_history():
    m = GatewayMetrics()
    ctl, clock = control_plane(m)
    core = ctl.core
    for n in ("a", "b"):
        assert register(core, n)[0]
    clock.t += 1.5
    core.tick(clock.t)
    core.received(clock.t, "a", cp.Report(1, load(850.0), core.dir.table.version))
    move, _ = core.start_move(clock.t, "a", [Move(("key", "k"), "a", "b", 1.0)], "hot")
    v = samples(generate_latest(m.registry).decode())
    assert v['gateway_node_utilization{node="a"}'] == pytest.approx(0.85)
    assert v["gateway_moves_in_flight"] == 1
    clock.t += 0.25
    core.received(clock.t, "a", cp.Released(move, 1))
    clock.t += 1.0
    v = samples(generate_latest(m.registry).decode())
    assert v["gateway_moves_in_flight"] == 0
    assert v['gateway_moves_total{outcome="done",reason="hot"}'] == 1
    assert v['gateway_move_seconds_count{outcome="done"}'] == 1
    assert v['gateway_move_seconds_bucket{le="0.25",outcome="done"}'] == 1
    assert v['gateway_node_lease_age_seconds{node="a"}'] == pytest.approx(1.25)
    assert v['gateway_node_slots{node="a"}'] + v['gateway_node_slots{node="b"}'] == len(
        core.dir.table.owners
    )
    assert v["gateway_table_epoch"] == core.dir.epoch
    assert v["gateway_table_version"] == core.dir.table.version


async def test_every_documented_metric_is_exported_and_every_exported_one_documented():
    m = GatewayMetrics()
    control_plane(m)
    names = exported(m.registry)
    assert documented(ROOT / "docs" / "gateway.md") == names
