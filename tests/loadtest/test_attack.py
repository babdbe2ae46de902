"""Attacks on the gateway's edge (``python -m loadtest attack``), small and short: a real
gateway process, an attacker process from its own loopback address, witness clients
measured before and during. The bounds asserted are service, not latency (CI machines
are noisy); docs/reliability.md has the figures of full-size runs."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.attack import AttackConfig, run_attack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FDS = 1024  # the gateway's descriptor limit: max_connections (1024 - 64 - 64) / 2 = 448


async def attack(tmp_path: Any, kind: str, **kw: Any) -> dict[str, Any]:
    cfg = AttackConfig(kind=kind, duration=3, baseline=1.5, witnesses=5, workdir=tmp_path, **kw)
    r = await run_attack(cfg)
    print(r)
    during = r["during"]
    assert during["newcomers"] >= 8
    assert during["steady_errors"] == 0  # every established witness kept being served
    assert r["rss_growth_mib"] < 16
    return r


async def test_idle_flood_from_one_address_does_not_lock_others_out(tmp_path):
    """1,500 connections that never finish their upgrade (three times max_connections):
    before the per-address limits about half the newcomers got 503."""
    r = await attack(tmp_path, "idle-flood", conns=1500, gateway_fds=FDS)
    assert r["newcomers_served"] >= 0.8
    assert r["gateway"]["rejected"].get("429", 0) > 0
    assert r["during"]["fds_max"] < 200  # the attacker holds 32 unfinished upgrades


async def test_ping_flood_is_cut_and_others_are_served(tmp_path):
    r = await attack(tmp_path, "ping-flood")
    assert r["gateway"]['gateway_frame_violations_total{code="1008"}'] >= 1
    assert r["newcomers_served"] >= 0.8


async def test_admin_flood_leaves_the_data_plane_and_operators_served(tmp_path):
    r = await attack(tmp_path, "admin-flood", conns=1500, gateway_fds=FDS)
    assert r["newcomers_served"] >= 0.8
    assert r["operator_answered"] >= 0.8
    assert r["during"]["fds_max"] < 200  # at most admin_max_connections of them


async def test_one_client_cannot_grow_the_gateway_by_16_mib(tmp_path):
    r = await attack(tmp_path, "memory")
    assert all(v < 16 for v in r["rss_growth_mib_by_step"].values())
    assert r["attacker"]["huge_head_answer"] == "HTTP/1.1 431"
    assert r["attacker"]["big_frame_closed_1009"] >= 1
    assert r["newcomers_served"] >= 0.8
