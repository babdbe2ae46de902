"""Every durability mode under the faults it claims to survive, with real processes.

Moves, idle keys of a moving slot, SIGTERM and a control-plane crash in the middle of a
move are lossless in every mode: each reply arrives exactly once, in order, with the
key's counter consecutive. A backend kill -9 loses nothing in write-through; in handoff
and checkpoint it may lose what was not written yet, and then the session is told
(``resumed: false``): the counter never goes back silently.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from typing import Any

import pytest

from clientlib import Client
from clientlib.kernel.backoff import BackoffPolicy
from clientlib.kernel.routing import slot_of
from loadtest.topology import Topology
from tests.e2e.conftest import admin_post, owner_of, stream_exact

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MODES = ["handoff", "checkpoint", "write-through"]


@pytest.fixture(params=MODES)
async def mode_topo(request, tmp_path):
    t = Topology(tmp_path / "topo", backends=3, capacity=100000, durability=request.param)
    await t.start()
    try:
        yield t
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)


def fast(t: Topology, key: str) -> Client:
    return Client(
        t.url,
        key,
        ping_interval=1.0,
        ping_timeout=2.0,
        backoff=BackoffPolicy(base=0.05, cap=1.0),
        start_timeout=30,
    )


def sibling(key: str, prefix: str) -> str:
    """Another key in the same slot."""
    slot = slot_of(key)
    return next(k for k in (f"{prefix}{i}" for i in range(200_000)) if slot_of(k) == slot)


async def test_slot_move_with_an_idle_key_waking_up_is_exact(mode_topo: Topology):
    """Defect 1: a key of the moving slot that was idle wakes up during the move. It must
    not be activated by the source (its acked messages would be dropped at commit)."""
    t = mode_topo
    busy, idle = "doc:busy", sibling("doc:busy", "doc:idle")
    src = await owner_of(t, busy)
    dst = next(n for n in t.nodes if n != src)
    async with fast(t, busy) as a:
        b_replies: list[dict[str, Any]] = []

        async def move_while_idle_key_wakes() -> None:
            mover = asyncio.create_task(
                admin_post(t, "/v1/move", {"slot": slot_of(busy), "to": dst})
            )
            async with fast(t, idle) as b:  # connects in the middle of the move
                for i in range(1, 201):
                    await b.send({"n": i})
                for _ in range(200):
                    b_replies.append(await b.recv())
                assert b.stats.not_resumed == 0
            await mover

        await stream_exact(a, 3000, 1000, move_while_idle_key_wakes)
        assert a.stats.not_resumed == 0
    assert [m["n"] for m in b_replies] == list(range(1, 201))
    assert [m["count"] for m in b_replies] == list(range(1, 201))
    assert await owner_of(t, idle) == dst


async def test_sigterm_and_control_plane_crash_mid_move_are_exact(mode_topo: Topology):
    """SIGTERM of the owner, then the gateway (the control plane) killed right after a
    move started and restarted on the same state: the move is finished or aborted, and
    nothing is lost or duplicated in any mode."""
    t = mode_topo
    key = "doc:chain"
    async with fast(t, key) as c:
        owner = await owner_of(t, key)

        async def term() -> None:
            t.kill(owner, signal.SIGTERM)

        await stream_exact(c, 2000, 500, term)
        # the stopped node comes back, so every move has somewhere to go
        await asyncio.get_running_loop().run_in_executor(None, t.nodes[owner].wait, 15)
        t.start_backend(owner)
        await t.wait_ready(30)
        src = await owner_of(t, key)
        dst = next(n for n in t.nodes if n != src)

        async def crash_mid_move() -> None:
            mover = asyncio.create_task(admin_post(t, "/v1/move", {"key": key, "to": dst}))
            await asyncio.sleep(0.01)
            assert t.gateway is not None
            t.gateway.signal(signal.SIGKILL)
            t.gateway.wait(5)
            mover.cancel()
            await asyncio.gather(mover, return_exceptions=True)
            t.start_gateway()  # same ports and state directory
            await t.wait_ready(30)

        await stream_exact(c, 2000, 500, crash_mid_move)
        assert c.stats.not_resumed == 0
        assert c.stats.resumes >= 2


@pytest.mark.parametrize("mode", ["handoff", "checkpoint"])
async def test_kill9_loss_is_always_told(tmp_path, mode):
    """kill -9 in a mode that had not written everything: what is lost is lost loudly.
    The client sees resumed:false, every message it sent is answered at most once, and
    the counter goes back only across that not-resumed."""
    t = Topology(tmp_path / "k9", backends=3, capacity=100000, durability=mode)
    await t.start()
    try:
        key = "doc:crash"
        async with fast(t, key) as c:
            victim = await owner_of(t, key)
            seen: list[tuple[int, int, int]] = []  # (n, count, not_resumed so far)
            for i in range(1, 601):
                await c.send({"n": i})
                if i == 300:
                    t.kill(victim, signal.SIGKILL)
            got: set[int] = set()
            while len(got) < 600 - 0:
                try:
                    m = await asyncio.wait_for(c.recv(), 20)
                except TimeoutError:
                    break
                assert m["n"] not in got, "a reply arrived twice"
                got.add(m["n"])
                seen.append((m["n"], m["count"], c.stats.not_resumed))
            assert c.stats.not_resumed >= 1
            for (_, c1, r1), (_, c2, r2) in itertools.pairwise(seen):
                assert c2 > c1 or r2 > r1, "the counter went back without a not-resumed"
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)
