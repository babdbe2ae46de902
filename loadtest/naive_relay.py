"""A plain frame-by-frame websockets relay: the baseline the splicing gateway is compared to.

Each message is parsed, unmasked and re-framed by websockets on both hops; this
is what a proxy written the obvious way with the websockets library costs.
``python -m loadtest.naive_relay --listen HOST:PORT --backend HOST:PORT …``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import zlib
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from loadtest.echo_server import serve_forever


async def pump(
    src: ServerConnection | ClientConnection, dst: ServerConnection | ClientConnection
) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for msg in src:
            await dst.send(msg)
    await dst.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.naive_relay")
    p.add_argument("--listen", required=True)
    p.add_argument("--backend", action="append", required=True)
    args = p.parse_args()
    backends = list(args.backend)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        key = parse_qs(urlsplit(ws.request.path).query).get("key", [""])[0]
        target = backends[zlib.crc32(key.encode()) % len(backends)]
        async with connect(
            f"ws://{target}{ws.request.path}", compression=None, max_size=None, ping_interval=None
        ) as up:
            await asyncio.gather(pump(ws, up), pump(up, ws))

    serve_forever(handler, args.listen)


if __name__ == "__main__":
    main()
