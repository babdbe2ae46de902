"""A real gateway process for tests (``python -m gateway`` on loopback), and a plain
WebSocket echo server in the test's own loop to put behind it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from loadtest.bench_systems import consecutive_free_ports
from loadtest.topology import free_port

ADMIN_TOKEN = "admin-" + "t" * 26


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for m in ws:
            await ws.send(m)


@contextlib.asynccontextmanager
async def plain_server(handler: Any = echo, **kw: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, **kw) as srv:
        yield f"127.0.0.1:{next(iter(srv.sockets)).getsockname()[1]}"


def make_cert(
    directory: Path, name: str = "cert", san: str = "IP:127.0.0.1,DNS:backend.internal"
) -> tuple[Path, Path]:
    """A self-signed certificate (PEM) for ``san``, and its key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class GatewayProc:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path
    token: str | None
    admin_ssl: ssl.SSLContext | None = None

    def url(self, key: str = "room:1") -> str:
        return f"ws://127.0.0.1:{self.port}/ws?key={key}"

    @property
    def admin_url(self) -> str:
        scheme = "https" if self.admin_ssl else "http"
        return f"{scheme}://127.0.0.1:{self.admin_port}"

    def auth(self, token: str | None = None) -> dict[str, str]:
        t = token or self.token
        return {"Authorization": f"Bearer {t}"} if t else {}

    async def admin(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method,
                self.admin_url + path,
                json=body,
                headers=self.auth(token),
                ssl=self.admin_ssl or True,
            ) as r,
        ):
            text = await r.text()
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, text

    async def exited(self, timeout: float) -> int | None:
        """The exit code, or None if the process is still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.1)
        return self.proc.poll()


@contextlib.asynccontextmanager
async def gateway_process(
    tmp_path: Path,
    *args: str,
    token: str | None = ADMIN_TOKEN,
    preexec_fn: Callable[[], None] | None = None,
    admin_ssl: ssl.SSLContext | None = None,
    admin_ports: int = 1,
) -> AsyncIterator[GatewayProc]:
    """Start ``python -m gateway`` with ``args`` (the admin token through the environment)
    and wait until it answers ``/healthz``; SIGTERM it at the end if it is still running."""
    port, aport = free_port(), consecutive_free_ports(admin_ports)
    log = tmp_path / f"gateway-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    if token:
        env["GATEWAY_ADMIN_TOKEN"] = token
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                f"127.0.0.1:{aport}",
                "--state-dir",
                str(tmp_path / "state"),
                *args,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=preexec_fn,
        )
    gw = GatewayProc(proc, port, aport, log, token, admin_ssl)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(150):
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway exited at start:\n{log.read_text()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{gw.admin_url}/healthz", ssl=admin_ssl or True) as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"gateway not up:\n{log.read_text()}")
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
