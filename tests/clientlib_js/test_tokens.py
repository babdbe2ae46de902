"""Upgrade tokens with the JS client: in Node it sends `Authorization: Bearer` and sees
the gateway's HTTP refusals; in Chromium it sends `?token=` and cannot see them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from loadtest.topology import Topology
from tests.clientlib_js.conftest import chromium_cmd, node_cmd, run_js

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SECRET = "js-client-test-secret-of-32-bytes-or-more"


def token(keys: list[str], secret: str = SECRET, ttl: float = 600) -> str:
    claims = {"sub": "tester", "keys": keys, "exp": int(time.time() + ttl)}
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def jwt_topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    t = Topology(
        tmp_path_factory.mktemp("jwt") / "topo",
        backends=1,
        extra_gateway_args=["--jwt-secret", SECRET],
    )
    asyncio.run(t.start())
    try:
        yield t
    finally:
        t.stop(10)


async def test_node_sends_the_header_and_sees_refusals(jwt_topo: Topology, js_dist: Path) -> None:
    def attempt(tok: str, key: str = "room:1") -> list[str]:
        args = {"url": jwt_topo.url, "key": key, "options": {"token": tok}}
        return node_cmd(js_dist, "attempt", args)

    ok = await run_js(attempt(token(["room:*"])))
    assert ok["ok"] and ok["reply"] == {"n": 1, "count": 1}, ok
    bad = await run_js(attempt(token(["room:*"], secret="another-secret-of-32-bytes-or-more")))
    assert (bad["ok"], bad["error"]) == (False, "Unauthorized"), bad
    expired = await run_js(attempt(token(["room:*"], ttl=-60)))
    assert expired["error"] == "Unauthorized", expired
    other = await run_js(attempt(token(["doc:*"])))
    assert other["error"] == "HandshakeRefused" and "403" in other["message"], other


async def test_chromium_sends_the_query_token(
    jwt_topo: Topology, chromium: str, page_server: str
) -> None:
    def attempt(tok: str) -> list[str]:
        options = {"token": tok, "giveUpAfter": 1500}
        args = {"url": jwt_topo.url, "key": "room:2", "options": options}
        return chromium_cmd(page_server + "/", "attempt", args)

    ok = await run_js(attempt(token(["room:2"])))
    assert ok["ok"] and ok["reply"] == {"n": 1, "count": 1}, ok
    # A browser cannot see the 401: it retries with backoff until giveUpAfter.
    bad = await run_js(attempt(token(["room:2"], secret="another-secret-of-32-bytes-or-more")))
    assert (bad["ok"], bad["error"]) == (False, "GaveUp"), bad
    assert [e["kind"] for e in bad["events"]].count("disconnected") >= 2
