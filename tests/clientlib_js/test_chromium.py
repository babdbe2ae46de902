"""The JS client's browser bundle in headless Chromium against real gateway and backend
processes: the same stream, through a forced move and a backend SIGTERM."""

from __future__ import annotations

import os

import pytest

from loadtest.topology import Topology
from tests.clientlib_js.conftest import assert_exact, chromium_cmd, run_js
from tests.clientlib_js.faults import move, sigterm_owner
from tests.e2e.conftest import owner_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

N = 4000


async def test_move_and_sigterm_exactly_once(
    topo: Topology, chromium: str, page_server: str
) -> None:
    key = "doc:js chromium/1+1"
    log: list[str] = []
    faults = {"move": move(topo, [key], log), "term": sigterm_owner(topo, key, log)}
    args = {
        "url": topo.url,
        "key": key,
        "n": N,
        "faults": [{"at": N // 3, "name": "move"}, {"at": 2 * N // 3, "name": "term"}],
    }
    result = await run_js(chromium_cmd(page_server + "/", "stream", args), faults)
    if os.environ.get("JS_E2E_REPORT"):
        print(result["stats"], result["events"], log)
    assert_exact(result, N)
    stats, kinds = result["stats"], [e["kind"] for e in result["events"]]
    assert stats["resumes"] >= 2 and stats["notResumed"] == 0, (stats, log)
    assert "moved" in kinds and "not_resumed" not in kinds
    assert await owner_of(topo, key) != log[-1].split()[1]


async def test_offline_then_online_resumes(topo: Topology, chromium: str, page_server: str) -> None:
    """The page goes offline for a second (Chromium's network emulation): when the
    browser says it is online again, the client replaces its connection and resumes."""
    n = 2000
    args = {
        "url": topo.url,
        "key": "doc:js-offline",
        "n": n,
        "faults": [{"at": n // 2, "name": "browser:offline"}],
    }
    result = await run_js(chromium_cmd(page_server + "/", "stream", args))
    if os.environ.get("JS_E2E_REPORT"):
        print(result["stats"], result["events"])
    assert_exact(result, n)
    assert result["stats"]["resumes"] >= 1 and result["stats"]["notResumed"] == 0
    reasons = [e["reason"] for e in result["events"] if e["kind"] == "disconnected"]
    assert "network changed" in reasons, result["events"]
