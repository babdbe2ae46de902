"""The faults the JS end-to-end runs request: a forced move and a backend SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from loadtest.topology import Topology
from tests.clientlib_js.conftest import Fault
from tests.e2e.conftest import admin_post, owner_of


def move(topo: Topology, keys: list[str], log: list[str]) -> Fault:
    """Move each key to another node through the admin API (the gateway's forced move)."""

    async def run() -> None:
        for key in keys:
            src = await owner_of(topo, key)
            dst = next(n for n in topo.nodes if n != src and topo.nodes[n].alive)
            await admin_post(topo, "/v1/move", {"key": key, "to": dst})
            log.append(f"move {key} {src}->{dst}")

    return run


def sigterm_owner(topo: Topology, key: str, log: list[str]) -> Fault:
    """SIGTERM the key's owner and wait for it to exit (it hands its keys off first)."""

    async def run() -> None:
        owner = await owner_of(topo, key)
        topo.kill(owner, signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, topo.nodes[owner].wait, 15)
        log.append(f"sigterm {owner} exit {code}")

    return run
