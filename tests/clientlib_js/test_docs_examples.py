"""docs/clientlib-js.md's examples run as written against a real topology (only the
gateway URL, and the package name for the Node script, are replaced by the test's)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from loadtest.topology import Topology
from tests.clientlib_js import conftest
from tests.clientlib_js.conftest import chromium_cmd, run_js

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DOC = Path(__file__).parents[2] / "docs" / "clientlib-js.md"
DEMO_URL = "ws://127.0.0.1:9000/ws"


def example(lang: str) -> str:
    blocks = re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, f"expected one {lang} example"
    return str(blocks[0])


async def test_node_script(topo: Topology, js_dist: Path, tmp_path: Path) -> None:
    code = example("js").replace(DEMO_URL, topo.url)
    code = code.replace('"anchorage-client"', repr((js_dist / "index.js").as_uri()))
    script = tmp_path / "example.mjs"
    script.write_text(code)
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "{ n: 1, count: 1 }" in out.decode() and "{ n: 2, count: 2 }" in out.decode()


async def test_chat_page(tmp_path: Path, chromium: str, page_server: str) -> None:
    t = Topology(tmp_path / "topo", backends=2, app="chat")
    await t.start()
    try:
        conftest.extra_pages["/chat.html"] = example("html").replace(DEMO_URL, t.url)
        result = await run_js(chromium_cmd(page_server + "/chat.html", "chatPage", {"text": "hi"}))
    finally:
        conftest.extra_pages.pop("/chat.html", None)
        await asyncio.get_running_loop().run_in_executor(None, t.stop, 10.0)
    assert any(line.endswith(": hi") for line in result["log"]), result
