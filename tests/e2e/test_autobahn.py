"""Autobahn conformance (cases 1-7 and 10, via kosoku) through the gateway and straight
against the same plain echo backend: the gateway must add no failure."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from loadtest.topology import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"]


def wait_port(port: int) -> None:
    import socket

    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def run_cases(addr: str, out: Path) -> dict[str, str]:
    kosoku = shutil.which("kosoku") or str(Path(sys.executable).parent / "kosoku")
    args = [kosoku, "-m", "fuzzingclient", "-o", str(out)]
    for c in CASES:
        args += ["-i", c]
    subprocess.run([*args, addr], capture_output=True, timeout=200)  # exit 1 on any failure
    index = json.loads((out / "index.json").read_text())
    (agent,) = index.values()
    return {case: r["behavior"] for case, r in agent.items()}


def test_gateway_adds_no_failure(tmp_path):
    echo_port, gw_port = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, "-m", "loadtest.echo_server", f"127.0.0.1:{echo_port}"])
    ]
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--listen",
                f"127.0.0.1:{gw_port}",
                "--admin-listen",
                f"127.0.0.1:{free_port()}",
                "--static-backend",
                f"127.0.0.1:{echo_port}",
                "--require-key",
                "off",
                "--log-level",
                "warning",
                "--state-dir",
                str(tmp_path / "gateway-state"),
            ]
        )
    )
    try:
        wait_port(echo_port)
        wait_port(gw_port)
        direct = run_cases(f"127.0.0.1:{echo_port}", tmp_path / "direct")
        via = run_cases(f"127.0.0.1:{gw_port}", tmp_path / "gateway")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(10)
    assert len(via) == len(direct) > 200
    failed_direct = {c for c, b in direct.items() if b == "FAILED"}
    failed_via = {c for c, b in via.items() if b == "FAILED"}
    assert failed_via <= failed_direct, sorted(failed_via - failed_direct)
    assert not {c for c, b in via.items() if b == "ERROR"}
    summary = {"direct": Counter(direct.values()), "gateway": Counter(via.values())}
    print(json.dumps(summary))
