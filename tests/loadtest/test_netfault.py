"""Network faults in a namespace the test creates: loss, blackhole, resets, bandwidth cap.
Delivery must stay exact and no connection may be left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.netfault import missing_tools

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")
def test_network_faults(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "netfault",
            "--clients",
            "10",
            "--rate",
            "20",
            "--hold",
            "5",
            "--workdir",
            str(tmp_path / "nf"),
        ],
        capture_output=True,
        text=True,
        timeout=230,
    )
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip()[-300:])
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["fault"] for r in results} == {"loss", "blackhole", "reset", "tbf"}, proc.stderr[
        -2000:
    ]
    for r in results:
        assert (r["lost"], r["duplicated"], r["reordered"]) == (0, 0, 0), r
        assert r["zombie_connections"] == 0, r
    by = {r["fault"]: r for r in results}
    assert by["blackhole"]["disconnected_clients"] == 10  # every client noticed
    assert proc.returncode == 0
