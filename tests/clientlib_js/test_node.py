"""The JS client under Node (the ws package) against real gateway and backend processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from loadtest.topology import Topology
from tests.clientlib_js.conftest import assert_exact, node_cmd, run_js
from tests.clientlib_js.faults import move, sigterm_owner
from tests.e2e.conftest import owner_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

N = 4000


async def test_move_and_sigterm_exactly_once(topo: Topology, js_dist: Path) -> None:
    key = "doc:js node/1+1"  # '/', '+' and ' ' must survive the query string
    log: list[str] = []
    faults = {"move": move(topo, [key], log), "term": sigterm_owner(topo, key, log)}
    result = await run_js(
        node_cmd(
            js_dist,
            "stream",
            {
                "url": topo.url,
                "key": key,
                "n": N,
                "faults": [{"at": N // 3, "name": "move"}, {"at": 2 * N // 3, "name": "term"}],
            },
        ),
        faults,
    )
    assert_exact(result, N)
    stats, kinds = result["stats"], [e["kind"] for e in result["events"]]
    assert stats["resumes"] >= 2 and stats["notResumed"] == 0, (stats, log)
    if os.environ.get("JS_E2E_REPORT"):
        print(stats, result["events"], log)
    assert "moved" in kinds and "not_resumed" not in kinds
    assert all(n.alive for name, n in topo.nodes.items() if name != log[-1].split()[1])
    assert await owner_of(topo, key) != log[-1].split()[1]


async def test_lost_session_is_reported_and_renumbered(tmp_path: Path, js_dist: Path) -> None:
    """kill -9 in handoff mode loses the session: the client hears resumed=false, emits
    not_resumed, renumbers what it still held from 1, and the new session works."""
    t = Topology(tmp_path / "topo", backends=2, capacity=100000, durability="handoff")
    await t.start()
    key = "doc:js-lost"
    log: list[str] = []

    async def kill9() -> None:
        owner = await owner_of(t, key)
        t.kill(owner, signal.SIGKILL)
        log.append(owner)

    try:
        result = await run_js(
            node_cmd(
                js_dist,
                "stream",
                {
                    "url": t.url,
                    "key": key,
                    "n": 3000,
                    "faults": [{"at": 1000, "name": "kill9"}],
                    "options": {"connectTimeout": 5000},
                },
            ),
            {"kill9": kill9},
        )
    finally:
        t.stop(10)
    kinds = [e["kind"] for e in result["events"]]
    if os.environ.get("JS_E2E_REPORT"):
        print(result["stats"], result["events"], len(result["ns"]), len(set(result["ns"])))
    assert result["stats"]["notResumed"] >= 1 and "not_resumed" in kinds, result["events"]
    # Whatever the crash lost, the replies to everything sent after the new session
    # started came back in order: the renumbered seqs were accepted by the server.
    assert result["ns"][-1] == 3000 and len(result["ns"]) == 3000
    tail = result["ns"][-500:]
    assert tail == sorted(tail)
