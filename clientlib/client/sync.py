"""A blocking facade over :class:`Client` for code that is not async.

The client runs on an event loop in a background thread; each call hands a
coroutine to it and waits. Semantics (ordering, exactly-once, reconnects,
exceptions) are the async client's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from clientlib.client.client import Client, ClientStats

__all__ = [
    "SyncClient",
]

T = TypeVar("T")


class SyncClient:
    """``with SyncClient(url, key) as c: c.send({...}); print(c.recv(timeout=5))``"""

    def __init__(self, url: str, key: str, **options: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name=f"clientlib-{key}"
        )
        self._thread.start()

        async def make() -> Client:
            return Client(url, key, **options)

        self._client = self._call(make())

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def __enter__(self) -> SyncClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._call(self._client.start())

    def send(self, obj: Any, *, wait_ack: bool = False, timeout: float | None = None) -> int:
        return self._call(self._client.send(obj, wait_ack=wait_ack), timeout)

    def recv(self, timeout: float | None = None) -> Any:
        """The next message; TimeoutError if none arrives within ``timeout`` seconds."""
        return self._call(self._client.recv(), timeout)

    @property
    def stats(self) -> ClientStats:
        return self._client.stats

    @property
    def resumed(self) -> bool | None:
        return self._client.resumed

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close(), 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
