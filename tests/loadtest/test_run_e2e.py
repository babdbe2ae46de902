"""A short hotspot run through real processes, as the README's demo does (issue: loadtest)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_quick_hotspot_run(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "run",
            "--scenario",
            "quick",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    for field in (
        "time_to_rebalance_s",
        "imbalance_max_after",
        "lost",
        "duplicated",
        "reordered",
        "reconnect_resume_p99_ms",
        "moves",
        "p99_ms",
        "rescue",
        "unsplittable",
        "description",
    ):
        assert field in r
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["reordered"] == 0
    assert r["moves"] >= 1  # the hotspot was acted on
    assert r["verdict"]["c2s_lost"] == 0  # checked against the store's ground truth
    assert (out / "report.png").stat().st_size > 10_000
    assert "throughput" in proc.stdout
