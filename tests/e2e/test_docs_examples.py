"""The client library's documented examples run as written (against a real topology;
only the gateway URL is replaced by the test's)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.topology import Topology

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DOC = Path(__file__).parents[2] / "docs" / "clientlib.md"


def examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return [b for b in blocks if "asyncio.run(" in b or "SyncClient(" in b]


def test_there_are_runnable_examples():
    assert len(examples()) >= 2


@pytest.mark.parametrize("index", range(2))
async def test_example_runs(topo: Topology, index: int):
    code = examples()[index].replace("ws://127.0.0.1:9000/ws", topo.url)
    proc = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'count': 1" in proc.stdout
