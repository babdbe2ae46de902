"""The admin listener of a real gateway process under a flood of idle connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import ssl

import aiohttp
import pytest
from websockets.asyncio.client import connect

from clientlib.kernel.credentials import node_credential
from tests.gateway.gwproc import gateway_process, make_cert, plain_server

pytestmark = pytest.mark.timeout(90)

FDS = 1024


def low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS, FDS))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def idle_connections(port: int, n: int) -> list[asyncio.StreamWriter]:
    out = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            out.append(w)
    return out


async def test_idle_admin_flood_leaves_the_data_plane_its_descriptors(tmp_path):
    """1,500 idle connections to the admin port of a gateway with 1,024 descriptors:
    the gateway holds at most admin_max_connections of them, clients still get in,
    and the admin API still answers."""
    async with (
        plain_server() as b,
        gateway_process(tmp_path, "--static-backend", b, preexec_fn=low_fd_limit) as gw,
    ):
        base = open_fds(gw.proc.pid)
        flood = await idle_connections(gw.admin_port, 1500)
        await asyncio.sleep(0.3)
        held = open_fds(gw.proc.pid) - base
        assert held <= 64 + 8, held
        for i in range(20):
            async with connect(gw.url(f"k{i}")) as ws:
                await ws.send("served")
                assert await ws.recv() == "served"
        assert (await gw.admin("GET", "/v1/status"))[0] == 200  # pushes out an idle one
        _, metrics = await gw.admin("GET", "/metrics")
        assert 'gateway_admin_dropped_total{reason="evicted"}' in metrics
        for w in flood:
            w.close()


async def test_admin_connections_that_send_nothing_or_too_slowly_are_closed(tmp_path):
    async with (
        plain_server() as b,
        gateway_process(tmp_path, "--static-backend", b, "--admin-timeout-s", "1") as gw,
    ):
        port = gw.admin_port
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # never finished
        slow_body = await asyncio.open_connection("127.0.0.1", port)
        slow_body[1].write(
            f"POST /v1/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        keepalive = await asyncio.open_connection("127.0.0.1", port)
        keepalive[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await keepalive[0].readuntil(b"ok\n")).startswith(b"HTTP/1.1 200")
        async with asyncio.timeout(5):
            assert await silent[0].read() == b""
            assert await partial[0].read() == b""
            assert (await slow_body[0].read()).startswith(b"HTTP/1.1 408")
            assert await keepalive[0].read() == b""  # idle after its answer
        assert gw.proc.poll() is None  # the drain never got its body
        _, metrics = await gw.admin("GET", "/metrics")
        assert 'gateway_admin_dropped_total{reason="timeout"}' in metrics


async def test_control_sockets_do_not_count_once_authenticated(tmp_path):
    secret = "c" * 32
    async with (
        gateway_process(tmp_path, "--control-secret", secret, "--admin-max-connections", "8") as gw,
        aiohttp.ClientSession() as s,
    ):
        url = f"{gw.admin_url}/v1/control"
        controls = [
            await s.ws_connect(
                url,
                headers={
                    "X-Node-Id": f"n{i}",
                    "Authorization": f"Bearer {node_credential(secret, f'n{i}')}",
                },
            )
            for i in range(12)
        ]
        flood = await idle_connections(gw.admin_port, 50)  # evicts idle ones, not these
        await asyncio.sleep(0.2)
        for ws in controls:
            await ws.send_str("garbage")
            reply = await asyncio.wait_for(ws.receive_bytes(), 5)
            assert b'"t":"error"' in reply
        bad = [await asyncio.open_connection("127.0.0.1", gw.admin_port) for _ in range(3)]
        for r, w in bad:  # a wrong secret: answered 401, then counted as any other
            w.write(b"GET /v1/control HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer no\r\n\r\n")
            assert (await r.readuntil(b"\r\n")).startswith(b"HTTP/1.1 401")
        for ws in controls:
            await ws.close()
        for w in flood + [w for _, w in bad]:
            w.close()


async def test_admin_port_over_tls(tmp_path):
    cert, key = make_cert(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cert))
    args = ("--admin-tls-cert", str(cert), "--admin-tls-key", str(key))
    async with (
        plain_server() as b,
        gateway_process(tmp_path, "--static-backend", b, *args, admin_ssl=ctx) as gw,
    ):
        assert (await gw.admin("GET", "/v1/status"))[0] == 200
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{gw.admin_port}/healthz") as r:
                    await r.read()
