"""A gateway and a backend started with ``--etcd`` before etcd is up: they say so, keep
trying, and serve once it is there (no traceback, no exit)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from clientlib.kernel.credentials import node_credential
from loadtest.services import EtcdCluster, missing
from loadtest.topology import free_port

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(missing("etcd") is not None, reason=str(missing("etcd"))),
]


async def _readyz(admin: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://{admin}/readyz") as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, OSError):
        return 0, ""


async def test_processes_wait_for_etcd_and_then_serve(tmp_path):
    etcd_port, admin = free_port(), f"127.0.0.1:{free_port()}"
    endpoints = f"127.0.0.1:{etcd_port}"
    env = {**os.environ, "GATEWAY_CONTROL_SECRET": "s" * 32, "GATEWAY_ADMIN_TOKEN": "t" * 32}
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("gw", "node")}
    procs = [
        subprocess.Popen(
            [
                *[sys.executable, "-m", "gateway", "--etcd", endpoints, "--admin-listen", admin],
                *["--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "gw")],
            ],
            stdout=logs["gw"],
            stderr=subprocess.STDOUT,
            env=env,
        ),
        subprocess.Popen(
            [
                *[sys.executable, "-m", "backend", "counter", "--etcd", endpoints],
                *["--listen", f"127.0.0.1:{free_port()}", "--node-id", "n1"],
                *["--store", str(tmp_path / "store.db")],
            ],
            stdout=logs["node"],
            stderr=subprocess.STDOUT,
            env={**env, "BACKEND_CREDENTIAL": node_credential("s" * 32, "n1")},
        ),
    ]
    cluster = None
    try:
        deadline = time.monotonic() + 20
        while (await _readyz(admin))[0] != 503:
            assert time.monotonic() < deadline, "the gateway's admin port never answered"
            await asyncio.sleep(0.2)
        await asyncio.sleep(4)  # a call gives up after 3 s, then it is logged
        assert all(p.poll() is None for p in procs)
        for name in logs:
            text = (tmp_path / f"{name}.log").read_text()
            assert "etcd_unreachable" in text and "Traceback" not in text, text[-2000:]
        cluster = EtcdCluster(tmp_path / "etcd", client_ports=[etcd_port]).start()
        deadline = time.monotonic() + 40
        while (await _readyz(admin))[0] != 200:
            assert time.monotonic() < deadline, "never ready once etcd was there"
            await asyncio.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if cluster is not None:
            cluster.stop()
        for fh in logs.values():
            fh.close()
