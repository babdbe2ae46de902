"""The backend hop over TLS: the gateway dials a TLS-terminating WebSocket server and
verifies it (CA, name, optionally its own client certificate)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clientlib.kernel.settings import ConfigError
from gateway.config import GatewayConfig
from gateway.route_source import StaticDirectory
from gateway.server import Gateway
from tests.gateway.gwproc import make_cert, plain_server

pytestmark = pytest.mark.timeout(30)


def server_ctx(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


@contextlib.asynccontextmanager
async def gateway(backend: str, **kw: Any) -> AsyncIterator[Gateway]:
    cfg = GatewayConfig(listen="127.0.0.1:0", static_backend=[backend], backend_tls=True, **kw)
    gw = Gateway(cfg, StaticDirectory([backend]))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


async def status(gw: Gateway) -> int:
    try:
        async with connect(f"ws://127.0.0.1:{gw.port}/ws?key=k") as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_relays_to_a_tls_backend_it_verifies(tmp_path):
    cert, key = make_cert(tmp_path)
    other, _ = make_cert(tmp_path, "other")
    async with plain_server(ssl=server_ctx(cert, key)) as b:
        async with gateway(b, backend_tls_ca=str(cert)) as gw:
            assert await status(gw) == 101
            assert gw.metrics.backend_unreachable._value.get() == 0
        async with gateway(b, backend_tls_ca=str(other)) as gw:  # not the backend's CA
            assert await status(gw) == 502
            assert gw.metrics.backend_unreachable._value.get() == 1
        async with gateway(b) as gw:  # the system's CAs do not know a self-signed one
            assert await status(gw) == 502


async def test_server_name_when_certificates_carry_a_name_not_the_address(tmp_path):
    cert, key = make_cert(tmp_path, san="DNS:backend.internal")
    async with plain_server(ssl=server_ctx(cert, key)) as b:
        async with gateway(b, backend_tls_ca=str(cert)) as gw:
            assert await status(gw) == 502  # 127.0.0.1 is not in the certificate
        async with gateway(
            b, backend_tls_ca=str(cert), backend_tls_server_name="backend.internal"
        ) as gw:
            assert await status(gw) == 101


async def test_client_certificate_for_mutual_tls(tmp_path):
    cert, key = make_cert(tmp_path)
    gw_cert, gw_key = make_cert(tmp_path, "gateway")
    async with plain_server(ssl=server_ctx(cert, key, client_ca=gw_cert)) as b:
        async with gateway(b, backend_tls_ca=str(cert)) as gw:
            assert await status(gw) == 502  # no client certificate: refused by the backend
        async with gateway(
            b, backend_tls_ca=str(cert), backend_tls_cert=str(gw_cert), backend_tls_key=str(gw_key)
        ) as gw:
            assert await status(gw) == 101


def test_backend_tls_settings_need_backend_tls():
    with pytest.raises(ConfigError, match="backend_tls"):
        GatewayConfig(backend_tls_ca="ca.pem")
    with pytest.raises(ConfigError, match="together"):
        GatewayConfig(backend_tls=True, backend_tls_cert="c.pem")
