"""A bare websockets echo server (no session protocol): the benchmarks' backend.

``python -m loadtest.echo_server HOST:PORT [--flood]``: with ``--flood`` it does not
echo but sends 64 KiB messages as fast as the client takes them (a firehose, to
make slow readers).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from collections.abc import Awaitable, Callable

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for msg in ws:
            await ws.send(msg)


async def flood(ws: ServerConnection) -> None:
    chunk = b"x" * 65536
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send(chunk)


def serve_forever(handler: Callable[[ServerConnection], Awaitable[None]], address: str) -> None:
    """Run a benchmark server on uvloop: no compression, no size limit, no pings, the
    descriptor limit raised to the hard one."""
    host, port = address.rsplit(":", 1)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> None:
        async with serve(
            handler,
            host,
            int(port),
            compression=None,
            max_size=None,
            ping_interval=None,
            backlog=4096,
        ):
            await asyncio.Future()

    uvloop.run(run())


def main() -> None:
    serve_forever(flood if "--flood" in sys.argv[2:] else echo, sys.argv[1])


if __name__ == "__main__":
    main()
