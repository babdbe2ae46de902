"""The live dashboard: its access rules, its event stream, and the page in a real browser
while moves happen."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pytest

from clientlib import Client
from loadtest.topology import Topology
from tests.e2e.conftest import admin_post, owner_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

JS = Path(__file__).parents[2] / "clientlib" / "js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def topo(tmp_path):
    t = Topology(tmp_path / "topo", backends=3, capacity=100000)
    await t.start()
    try:
        yield t
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)


async def test_access_and_the_event_stream(topo: Topology):
    # unsafe: keep cookies for an IP address host (a browser does)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{topo.admin_url}/dashboard") as r:
            assert r.status == 401
        async with s.get(f"{topo.admin_url}/dashboard?token=wrong") as r:
            assert r.status == 401
        async with s.get(f"{topo.admin_url}/dashboard/events", cookies={"x": "y"}) as r:
            assert r.status == 401
        # the token once in the URL: kept in an HttpOnly cookie, then the page without it
        async with s.get(
            f"{topo.admin_url}/dashboard?token={topo.admin_token}", allow_redirects=False
        ) as r:
            assert r.status == 302 and r.headers["Location"] == "/dashboard"
            assert "HttpOnly" in r.headers["Set-Cookie"]
        async with s.get(f"{topo.admin_url}/dashboard") as r:
            assert r.status == 200 and "EventSource" in await r.text()
            assert "http://" not in (await r.text()).replace("http://www.w3.org", "")
        async with s.get(f"{topo.admin_url}/dashboard/events") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            line = await asyncio.wait_for(r.content.readline(), 10)
            snap = orjson.loads(line.removeprefix(b"data: "))
            assert set(snap["nodes"]) == set(topo.nodes)
            assert len(snap["owners"]) == 4096  # the slot map comes with the first snapshot


def _chromium_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS / "node_modules" / "playwright-core").is_dir():
        return "clientlib/js/node_modules is missing (./dev test runs npm ci)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (scripts/system-deps.sh installs it as root)"
    return None


@pytest.mark.skipif(_chromium_missing() is not None, reason=str(_chromium_missing()))
async def test_a_move_shows_up_in_the_browser(topo: Topology, tmp_path):
    """Headless Chromium opens the dashboard during a run; a move appears in it."""
    key = "dash:hot"

    async def traffic(stop: asyncio.Event) -> None:
        async with Client(topo.url, key) as c:
            n = 0
            while not stop.is_set():
                n += 1
                await c.send({"n": n})
                await c.recv()
                await asyncio.sleep(0.002)

    stop = asyncio.Event()
    load = asyncio.create_task(traffic(stop))
    src = await owner_of(topo, key)
    dst = next(n for n in topo.nodes if n != src)
    png = tmp_path / "dashboard.png"
    url = f"{topo.admin_url}/dashboard?token={topo.admin_token}"
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(Path(__file__).parent / "dashboard_chromium.mjs"),
        str(JS),
        url,
        f"{src} → {dst}",
        str(png),
        "60000",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    await asyncio.sleep(3)  # the page is open and streaming
    await admin_post(topo, "/v1/move", {"key": key, "to": dst})
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    stop.set()
    await load
    assert proc.returncode == 0, err.decode()[-2000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["errors"] == [] and seen["outside"] == []  # nothing from the internet
    assert "token" not in seen["url"]
    assert any(f"{src} → {dst}" in row and "done" in row for row in seen["moves"])
    assert png.stat().st_size > 10_000
    if os.environ.get("ANCHORAGE_DOCS_SCREENSHOT"):
        shutil.copy(png, Path(__file__).parents[2] / "docs" / "img" / "dashboard.png")
