"""Fixtures for the JS client's end-to-end tests: the built library, headless Chromium,
a server for the test page, real topologies, and a runner that talks to the node
drivers (run_node.mjs, run_chromium.mjs) in JSON lines."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loadtest.topology import Topology

HERE = Path(__file__).parent
JS = HERE.parents[1] / "clientlib" / "js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

Fault = Callable[[], Awaitable[None]]


def _stale(dist: Path) -> bool:
    built = [dist / "index.js", dist / "anchorage.js"]
    if not all(p.exists() for p in built):
        return True
    oldest = min(p.stat().st_mtime for p in built)
    return any(p.stat().st_mtime > oldest for p in (JS / "src").glob("*.ts"))


@pytest.fixture(scope="session")
def js_dist() -> Path:
    """clientlib/js/dist, built if missing or older than the sources (./dev test builds it)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    if not (JS / "node_modules").is_dir():
        pytest.skip("clientlib/js/node_modules is missing (./dev test runs npm ci)")
    dist = JS / "dist"
    if _stale(dist):
        subprocess.run(["npm", "run", "-s", "build"], cwd=JS, check=True, timeout=120)
    return dist


@pytest.fixture(scope="session")
def chromium(js_dist: Path) -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (scripts/system-deps.sh installs it as root)")
    return CHROMIUM


PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>anchorage client test</title></head>
<body><p>The end-to-end tests drive this page through page.evaluate.</p></body></html>
"""


@pytest.fixture(scope="session")
def page_server(js_dist: Path) -> Iterator[str]:
    """A localhost HTTP server for the test page, the bundle and the scenarios; its base URL."""
    routes: dict[str, tuple[Path | bytes, str]] = {
        "/": (PAGE, "text/html; charset=utf-8"),
        "/anchorage.js": (js_dist / "anchorage.js", "text/javascript"),
        "/anchorage.js.map": (js_dist / "anchorage.js.map", "application/json"),
        "/scenario.js": (HERE / "scenario.mjs", "text/javascript"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path not in routes and path in extra_pages:
                body, ctype = extra_pages[path].encode(), "text/html; charset=utf-8"
            elif path in routes:
                src, ctype = routes[path]
                body = src if isinstance(src, bytes) else src.read_bytes()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


#: Pages a test adds to the page server (path -> HTML), e.g. the documented chat page.
extra_pages: dict[str, str] = {}


@pytest.fixture
async def topo(tmp_path: Path) -> AsyncIterator[Topology]:
    t = Topology(tmp_path / "topo", backends=3, capacity=100000, durability="write-through")
    await t.start()
    try:
        yield t
    finally:
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)


async def run_js(
    cmd: list[str], faults: dict[str, Fault] | None = None, timeout: float = 90
) -> Any:
    """Run a driver; do each fault it asks for, answer when done; return its result."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=64 << 20,  # the result line carries every reply
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.create_task(proc.stderr.read())
    result: Any = None
    marks: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while line := await proc.stdout.readline():
                msg = json.loads(line)
                if "mark" in msg:
                    marks.append(msg["mark"])
                    await (faults or {})[msg["mark"]]()
                    proc.stdin.write(f"done {msg['mark']}\n".encode())
                    await proc.stdin.drain()
                elif "result" in msg:
                    result = msg["result"]
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (await stderr).decode(errors="replace")
    assert proc.returncode == 0 and result is not None, f"driver failed: {err[-4000:]}"
    assert sorted(marks) == sorted(faults or {}), f"faults asked for: {marks}"
    return result


def node_cmd(js_dist: Path, scenario: str, args: dict[str, Any]) -> list[str]:
    lib = str(js_dist / "index.js")
    return ["node", str(HERE / "run_node.mjs"), lib, scenario, json.dumps(args)]


def chromium_cmd(page_url: str, scenario: str, args: dict[str, Any]) -> list[str]:
    return ["node", str(HERE / "run_chromium.mjs"), str(JS), page_url, scenario, json.dumps(args)]


def assert_exact(result: dict[str, Any], n: int) -> None:
    """Every n delivered exactly once and in order; the key's counter consecutive (counter app)."""
    assert result["ns"] == list(range(1, n + 1)), "replies lost, duplicated or out of order"
    first = result["counts"][0]
    assert result["counts"] == list(range(first, first + n)), "a message processed twice or lost"
    assert result["stats"]["duplicates"] >= 0 and result["stats"]["received"] == n
