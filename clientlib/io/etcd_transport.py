"""The etcd client's transport: HTTP/1.1 to the members' JSON gateway, with aiohttp.

The protocol lives in :mod:`clientlib.kernel.etcd`; this only moves bytes and
turns every network failure into :class:`~clientlib.kernel.etcd.EtcdUnavailable`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp

from clientlib.kernel.etcd import EtcdClient, EtcdUnavailable

__all__ = ["AiohttpTransport", "etcd_client"]

MAX_ANSWER = 16 << 20


class AiohttpTransport:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls  # https to the members, verified with it
        self.scheme = "https" if tls is not None else "http"
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32, ssl=self.tls or False),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=1.0),
            )
        return self._session

    async def call(
        self, endpoint: str, path: str, body: bytes, timeout: float, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        url = f"{self.scheme}://{endpoint}{path}"
        try:
            async with asyncio.timeout(timeout):
                async with self.session().post(url, data=body, headers=headers) as r:
                    data = bytearray()
                    async for chunk in r.content.iter_chunked(1 << 16):
                        data += chunk
                        if len(data) > MAX_ANSWER:
                            raise EtcdUnavailable(f"answer larger than {MAX_ANSWER} bytes")
                    return r.status, bytes(data)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise EtcdUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def stream(
        self, endpoint: str, path: str, body: bytes, headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        url = f"{self.scheme}://{endpoint}{path}"
        try:
            async with self.session().post(url, data=body, headers=headers) as r:
                if r.status != 200:
                    raise EtcdUnavailable(f"watch answered {r.status}")
                async for chunk in r.content.iter_any():
                    yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise EtcdUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def etcd_client(
    endpoints: list[str],
    *,
    ca_file: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> tuple[EtcdClient, AiohttpTransport]:
    """A client for these members: https verified with ``ca_file`` when given, etcd's
    authentication when ``user`` is."""
    transport = AiohttpTransport(ssl.create_default_context(cafile=ca_file) if ca_file else None)
    creds = (user, password or "") if user else None
    return EtcdClient(transport, endpoints, sleep=asyncio.sleep, credentials=creds), transport
