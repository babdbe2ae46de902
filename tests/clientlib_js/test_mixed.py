"""Python and JS clients on the same keys at once, through a forced move: every message
of each client answered exactly once and in order, and the key's counter, shared by
both, takes every value exactly once."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from loadtest.topology import Topology
from tests.clientlib_js.conftest import node_cmd, run_js
from tests.clientlib_js.faults import move
from tests.e2e.conftest import client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

N = 2000


async def py_stream(topo: Topology, key: str, moved: asyncio.Event) -> dict[str, Any]:
    async with client(topo, key) as c:
        got: list[dict[str, Any]] = []

        async def reader() -> None:
            while len(got) < N:
                got.append(await c.recv())

        r = asyncio.create_task(reader())
        for i in range(1, N + 1):
            await c.send({"n": i})
            if i == N - N // 5:
                await moved.wait()  # traffic after the move too
            if i % 200 == 0:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(r, 60)
        return {"ns": [m["n"] for m in got], "counts": [m["count"] for m in got], "stats": c.stats}


async def test_python_and_js_clients_share_keys(topo: Topology, js_dist: Path) -> None:
    keys = ["mix:1", "mix:2"]
    log: list[str] = []
    moved = asyncio.Event()
    do_move = move(topo, keys, log)

    async def move_then_tell() -> None:
        await do_move()
        moved.set()

    js = asyncio.create_task(
        run_js(
            node_cmd(
                js_dist,
                "streams",
                {"url": topo.url, "keys": keys, "n": N, "faults": [{"at": N // 3, "name": "move"}]},
            ),
            {"move": move_then_tell},
        )
    )
    py = await asyncio.gather(*(py_stream(topo, k, moved) for k in keys))
    js_results = await js
    for key, p, j in zip(keys, py, js_results, strict=True):
        assert j["key"] == key
        assert p["ns"] == list(range(1, N + 1)), f"{key}: Python client's replies"
        assert j["ns"] == list(range(1, N + 1)), f"{key}: JS client's replies"
        for counts in (p["counts"], j["counts"]):
            assert all(a < b for a, b in itertools.pairwise(counts))
        # The counter is the key's: between them the two clients saw every value once.
        assert sorted(p["counts"] + j["counts"]) == list(range(1, 2 * N + 1)), key
        assert j["stats"]["resumes"] >= 1 and j["stats"]["notResumed"] == 0
        assert p["stats"].resumes >= 1 and p["stats"].not_resumed == 0
    assert len(log) == len(keys)
