"""The floor of a Python relay on uvloop: bytes spliced, nothing read, nothing checked.

It forwards the client's upgrade to a backend chosen by ``?key=`` and then
passes every chunk on, both ways, with the gateway's flow control (pause the
other side above 64 KiB) and no frame tracking, limits or metrics. What the
gateway costs above this is its own work; what this costs above nginx is the
event loop's. ``python -m loadtest.splice_relay --listen HOST:PORT --backend HOST:PORT …``
"""

from __future__ import annotations

import argparse
import asyncio
import zlib
from typing import cast
from urllib.parse import parse_qs, urlsplit

import uvloop


class Client(asyncio.Protocol):
    def __init__(self, backends: list[tuple[str, int]]):
        self.backends = backends
        self.transport: asyncio.Transport | None = None
        self.peer: Backend | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" in self.head and self.peer is None:
            target = self.head.split(b" ", 2)[1].decode()
            key = parse_qs(urlsplit(target).query).get("key", [""])[0]
            addr = self.backends[zlib.crc32(key.encode()) % len(self.backends)]
            self.peer = Backend(self)
            asyncio.get_running_loop().create_task(self.dial(addr))

    async def dial(self, addr: tuple[str, int]) -> None:
        peer = self.peer
        assert peer is not None and self.transport is not None
        try:
            await asyncio.get_running_loop().create_connection(lambda: peer, *addr)
        except OSError:
            self.transport.abort()
            return
        head, self.head = self.head, b""
        assert peer.transport is not None
        peer.transport.write(head)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Backend(asyncio.Protocol):
    def __init__(self, client: Client):
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            self.client.transport.write(data)

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.splice_relay")
    p.add_argument("--listen", required=True)
    p.add_argument("--backend", action="append", required=True)
    args = p.parse_args()
    backends = [(b.rsplit(":", 1)[0], int(b.rsplit(":", 1)[1])) for b in args.backend]
    host, port = args.listen.rsplit(":", 1)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Client(backends), host, int(port), backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(run())


if __name__ == "__main__":
    main()
