"""etcd v3 through its JSON gateway (``POST /v3/...``): the calls this project makes.

The requests and answers are plain values here, and :class:`EtcdClient` speaks
them over an injected :class:`Transport` (each program brings an aiohttp one),
so this module stays free of sockets and event loops like the rest of the
kernel. Only what the directory needs is covered: ranges, puts, deletes,
transactions with compares, leases (grant, keep-alive, revoke) and watches.

**Failover.** The client is given every member's address. A call goes to the
current member; a member that does not answer (refused, timed out, or "no
leader") is left for the next one, until the call's deadline. A watch runs on
the current member; the caller restarts it from the last revision it saw.

The values (requests, answers, watch messages, errors) are in
:mod:`clientlib.kernel.etcd_api`, and offered here too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import orjson

from clientlib.kernel.etcd_api import (
    Compare,
    Delete,
    EtcdError,
    EtcdUnavailable,
    Event,
    KeyValue,
    LineSplitter,
    Op,
    Put,
    Range,
    TxnResult,
    WatchBatch,
    answer,
    b64,
    parse_endpoints,
    parse_watch,
    prefix_end,
)

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "Event",
    "KeyValue",
    "LineSplitter",
    "Op",
    "Put",
    "Range",
    "Transport",
    "TxnResult",
    "WatchBatch",
    "parse_endpoints",
    "parse_watch",
    "prefix_end",
]


class Transport(Protocol):
    async def call(
        self, endpoint: str, path: str, body: bytes, timeout: float, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``endpoint/path`` (http, or https): (status, answer). Raises
        :class:`EtcdUnavailable` when the member cannot be reached in time."""

    def stream(
        self, endpoint: str, path: str, body: bytes, headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        """POST and yield the answer's bytes as they come (a watch). Raises
        :class:`EtcdUnavailable` when the member cannot be reached or the stream breaks."""


class EtcdClient:
    def __init__(
        self,
        transport: Transport,
        endpoints: list[str],
        *,
        timeout: float = 3.0,
        attempt_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        credentials: tuple[str, str] | None = None,
    ):
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.transport = transport
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.clock = clock
        self.sleep = sleep
        self.current = 0  # index of the member calls go to
        self.failovers = 0
        self.credentials = credentials  # (user, password): etcd's authentication
        self._token: str | None = None

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.current]

    def next_endpoint(self) -> None:
        self.current = (self.current + 1) % len(self.endpoints)
        self.failovers += 1

    async def _headers(self, deadline: float) -> dict[str, str]:
        if self.credentials is None:
            return {}
        if self._token is None:
            user, password = self.credentials
            obj = await self._post(
                "/v3/auth/authenticate", {"name": user, "password": password}, deadline, {}
            )
            self._token = str(obj.get("token", ""))
            if not self._token:
                raise EtcdError("authentication: no token in the answer")
        return {"Authorization": self._token}

    async def _call(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        deadline = self.clock() + (timeout or self.timeout)
        try:
            return await self._post(path, body, deadline, await self._headers(deadline))
        except EtcdError as exc:
            if self.credentials is None or "auth token" not in str(exc):
                raise
            self._token = None  # expired (etcd's simple tokens last 5 minutes): once more
            return await self._post(path, body, deadline, await self._headers(deadline))

    async def _post(
        self, path: str, body: dict[str, Any], deadline: float, headers: dict[str, str]
    ) -> Any:
        data = orjson.dumps(body)
        last: EtcdUnavailable | None = None
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise last or EtcdUnavailable(f"{path}: no etcd member answered")
            try:
                status, raw = await self.transport.call(
                    self.endpoint, path, data, min(left, self.attempt_timeout), headers
                )
                return answer(status, raw)
            except EtcdUnavailable as exc:
                last = EtcdUnavailable(f"{self.endpoint}: {exc}")
                self.next_endpoint()
                if self.sleep is not None and self.current == 0:
                    await self.sleep(0.05)  # every member tried once: a short pause

    async def get(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        """The keys (one, or all under ``prefix``) and the store's revision."""
        req: dict[str, Any] = Range(key, prefix).to_json()["request_range"]
        obj = await self._call("/v3/kv/range", req)
        kvs = [KeyValue.from_json(kv) for kv in obj.get("kvs", [])]
        rev = int(obj.get("header", {}).get("revision", 0))
        if rev <= 0:  # every answer of a live store has a revision >= 1
            raise EtcdUnavailable("range: answer without a revision")
        return kvs, rev

    async def probe(self, key: str, timeout: float) -> int:
        """A quorum read of nothing but ``key``'s count: the store's revision if the
        current member (or the next) answers within ``timeout``."""
        obj = await self._call("/v3/kv/range", {"key": b64(key), "count_only": True}, timeout)
        return int(obj.get("header", {}).get("revision", 0))

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        obj = await self._call("/v3/kv/put", Put(key, value, lease).to_json()["request_put"])
        return int(obj.get("header", {}).get("revision", 0))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        req = Delete(key, prefix).to_json()["request_delete_range"]
        obj = await self._call("/v3/kv/deleterange", req)
        return int(obj.get("header", {}).get("revision", 0))

    async def txn(
        self, compare: list[Compare], success: list[Op], failure: list[Op] | None = None
    ) -> TxnResult:
        obj = await self._call(
            "/v3/kv/txn",
            {
                "compare": [c.to_json() for c in compare],
                "success": [op.to_json() for op in success],
                "failure": [op.to_json() for op in failure or []],
            },
        )
        ranges = [
            [KeyValue.from_json(kv) for kv in r["response_range"].get("kvs", [])]
            for r in obj.get("responses", [])
            if "response_range" in r
        ]
        return TxnResult(
            bool(obj.get("succeeded", False)),
            int(obj.get("header", {}).get("revision", 0)),
            ranges,
        )

    async def grant(self, ttl_s: int) -> int:
        obj = await self._call("/v3/lease/grant", {"TTL": str(ttl_s)})
        if obj.get("error"):
            raise EtcdError(f"lease grant: {obj['error']}")
        return int(obj["ID"])

    async def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Renew ``lease``; its TTL in seconds, 0 if it has expired (or never existed)."""
        obj = await self._call("/v3/lease/keepalive", {"ID": str(lease)}, timeout)
        return int(obj.get("result", obj).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AsyncIterator[WatchBatch]:
        """Batches of events on the current member, from ``start_revision``; raises
        :class:`EtcdUnavailable` when the stream breaks (the caller picks it up again)."""
        req: dict[str, Any] = {"key": b64(key), "progress_notify": True}
        if prefix:
            req["range_end"] = b64(prefix_end(key))
        if start_revision:
            req["start_revision"] = str(start_revision)
        splitter = LineSplitter()
        body = orjson.dumps({"create_request": req})
        headers = await self._headers(self.clock() + self.timeout)
        async for chunk in self.transport.stream(self.endpoint, "/v3/watch", body, headers):
            for line in splitter.feed(chunk):
                batch = parse_watch(line)
                if batch.canceled:
                    raise EtcdUnavailable("watch canceled by the server")
                yield batch
        raise EtcdUnavailable("watch stream ended")
