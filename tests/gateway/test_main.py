"""``python -m gateway`` as a process: drain through the admin API exits it (code 0),
undrain reopens it, a signal's drain is final."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from tests.gateway.gwproc import gateway_process, make_cert, plain_server

pytestmark = pytest.mark.timeout(60)

UPGRADE = (
    b"GET /ws?key=stuck HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def stuck_client(port: int) -> asyncio.StreamWriter:
    """An upgraded client that never reads again, so never answers a close."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(UPGRADE)
    assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return w


async def upgrade_status(url: str) -> int:
    try:
        async with connect(url) as ws:
            await ws.send("x")
            await ws.recv()
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_admin_drain_exits_the_process_with_code_0(tmp_path):
    async with (
        plain_server() as b,
        gateway_process(
            tmp_path, "--static-backend", b, "--drain-window-s", "0.5", "--drain-deadline-s", "3"
        ) as gw,
    ):
        stuck = await stuck_client(gw.port)  # keeps the gateway until the deadline
        async with connect(gw.url("a")) as ws:
            status, body = await gw.admin("POST", "/v1/drain")
            assert status == 202 and body["exit"] is True
            with pytest.raises(ConnectionClosed) as exc:
                await ws.recv()
            assert exc.value.rcvd is not None and exc.value.rcvd.code == 1001
        assert await upgrade_status(gw.url()) == 503
        assert await gw.exited(15) == 0
        stuck.close()
        assert "gateway_stopping" in gw.log.read_text()


async def test_undrain_before_the_deadline_keeps_the_gateway_up(tmp_path):
    async with (
        plain_server() as b,
        gateway_process(
            tmp_path, "--static-backend", b, "--drain-window-s", "20", "--drain-deadline-s", "30"
        ) as gw,
    ):
        clients = [await connect(gw.url(f"k{i}")) for i in range(3)]
        assert (await gw.admin("POST", "/v1/drain"))[0] == 202
        assert await upgrade_status(gw.url()) == 503
        assert (await gw.admin("GET", "/readyz"))[0] == 503
        status, body = await gw.admin("POST", "/v1/undrain")
        assert status == 200 and body == {"draining": False}
        assert (await gw.admin("GET", "/readyz"))[0] == 200
        assert await upgrade_status(gw.url()) == 101
        await asyncio.sleep(0.3)
        # The wave's first close went out at once; the others were called off.
        still_open = [ws for ws in clients if ws.state is State.OPEN]
        assert len(still_open) == 2
        for ws in still_open:
            await ws.send("still open")
            assert await ws.recv() == "still open"
            await ws.close()
        assert await gw.exited(1) is None


async def test_drain_without_exit_stays_up_past_the_deadline_until_undrain(tmp_path):
    async with (
        plain_server() as b,
        gateway_process(
            tmp_path, "--static-backend", b, "--drain-window-s", "0.2", "--drain-deadline-s", "1"
        ) as gw,
    ):
        status, body = await gw.admin("POST", "/v1/drain", {"exit": False})
        assert status == 202 and body["exit"] is False
        assert (await gw.admin("POST", "/v1/drain", {"exit": "no"}))[0] == 400
        await asyncio.sleep(1.5)
        assert gw.proc.poll() is None
        assert await upgrade_status(gw.url()) == 503
        assert (await gw.admin("POST", "/v1/undrain"))[0] == 200
        assert await upgrade_status(gw.url()) == 101


async def test_a_signal_drain_cannot_be_undone(tmp_path):
    async with (
        plain_server() as b,
        gateway_process(tmp_path, "--static-backend", b, "--drain-deadline-s", "3") as gw,
    ):
        stuck = await stuck_client(gw.port)
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, body = await gw.admin("POST", "/v1/undrain")
        assert status == 409, body
        assert await gw.exited(15) == 0
        stuck.close()


async def test_tls_connections_are_counted_before_their_handshake(tmp_path):
    """Connections that never start TLS are held to the same per-address limit as any
    other (the handshake starts once a connection is counted); TLS clients get in."""
    cert, key = make_cert(tmp_path)
    async with (
        plain_server() as b,
        gateway_process(
            tmp_path,
            "--static-backend",
            b,
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
            "--max-pending-per-ip",
            "8",
            "--handshake-timeout-s",
            "2",
        ) as gw,
    ):
        idle = []
        for _ in range(30):
            idle.append(
                await asyncio.open_connection("127.0.0.1", gw.port, local_addr=("127.0.0.2", 0))
            )
        refused = 0
        for r, _ in idle[8:]:
            with contextlib.suppress(ConnectionResetError):
                refused += await asyncio.wait_for(r.read(), 1) == b""
        assert refused == 22
        ctx = ssl.create_default_context(cafile=str(cert))
        async with connect(f"wss://127.0.0.1:{gw.port}/ws?key=t", ssl=ctx) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
        async with asyncio.timeout(5):  # the 8 that never spoke TLS: handshake_timeout_s
            for r, _ in idle[:8]:
                with contextlib.suppress(ConnectionResetError):
                    assert await r.read() == b""
        for _, w in idle:
            w.close()
