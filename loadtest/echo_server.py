"""A bare websockets echo server (no session protocol): the benchmarks' backend.

``python -m loadtest.echo_server HOST:PORT``
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for msg in ws:
            await ws.send(msg)


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> None:
        async with serve(
            echo, host, int(port), compression=None, max_size=None, ping_interval=None, backlog=4096
        ):
            await asyncio.Future()

    uvloop.run(run())


if __name__ == "__main__":
    main()
