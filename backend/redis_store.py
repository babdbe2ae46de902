"""The state store on Redis: the same fenced records as SQLite, reachable from any machine.

Each key's record is a hash (``epoch``, ``owner``, ``blob``) under
``{prefix}state:{key}``. A write is one Lua script, so the fence is checked and
the record replaced atomically inside Redis: accepted at a higher epoch than
the stored one, or at the same epoch by the same owner (see :mod:`backend.store`).
The script also keeps ``{prefix}max_epoch``, the highest epoch ever written, which
a backend reports when it registers so epochs never go back.

Write-through's journal of a key is a list under ``{prefix}journal:{key}``. A save
replaces it (in the same script); :meth:`RedisStore.append_journal` is one script
call for the entries of many keys (group commit), each pushed only if the key's
record is the appender's own at its epoch, checked inside Redis as it pushes.

Durability follows Redis's own: what each backend durability mode means on Redis
depends on ``appendonly``/``appendfsync`` (see ``docs/backend.md``). Calls are
synchronous, like SQLite's: a round trip on the event loop (tens of microseconds
on loopback).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import redis

from backend.journal import current
from backend.store import Append, StaleEpoch, StoredState, StoreError

__all__ = ["RedisStore"]

# KEYS: the record, the max-epoch key, the fence counters, the journal. ARGV: epoch, owner, blob.
# Returns {1} when written, {0, stored_epoch, stored_owner} when fenced off.
_SAVE: Final = """
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'owner')
local epoch = tonumber(ARGV[1])
if cur[1] then
  local stored = tonumber(cur[1])
  if epoch < stored or (epoch == stored and cur[2] ~= ARGV[2]) then
    redis.call('HINCRBY', KEYS[3], 'refused', 1)
    return {0, stored, cur[2]}
  end
end
redis.call('HINCRBY', KEYS[3], 'accepted', 1)
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'owner', ARGV[2], 'blob', ARGV[3])
redis.call('DEL', KEYS[4])
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
if epoch > top then redis.call('SET', KEYS[2], ARGV[1]) end
return {1}
"""

# KEYS: record 1, journal 1, record 2, journal 2, ... ARGV: epoch 1, owner 1, entry 1, ...
# Returns per entry {1} when pushed, {0, stored_epoch, stored_owner} when fenced off
# (the record is not the appender's own at its epoch; -1 when there is none).
_APPEND: Final = """
local out = {}
for i = 1, #KEYS / 2 do
  local cur = redis.call('HMGET', KEYS[2 * i - 1], 'epoch', 'owner')
  local a = 3 * i - 2
  if cur[1] and tonumber(cur[1]) == tonumber(ARGV[a]) and cur[2] == ARGV[a + 1] then
    redis.call('RPUSH', KEYS[2 * i], ARGV[a + 2])
    out[i] = {1}
  else
    out[i] = {0, tonumber(cur[1] or '-1'), cur[2] or ''}
  end
end
return out
"""

# KEYS: the record, the journal. ARGV: epoch, owner. Same fence, then delete.
_DELETE: Final = """
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'owner')
if not cur[1] then return {1} end
local epoch = tonumber(ARGV[1])
local stored = tonumber(cur[1])
if epoch < stored or (epoch == stored and cur[2] ~= ARGV[2]) then
  return {0, stored, cur[2]}
end
redis.call('DEL', KEYS[1], KEYS[2])
return {1}
"""


class RedisStore:
    """``redis://HOST:PORT/DB`` (``rediss://`` for TLS); ``prefix`` namespaces the keys."""

    def __init__(self, url: str, *, prefix: str = "anchorage:", timeout_s: float = 5.0):
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"store: expected redis://HOST:PORT/DB, got {url!r}")
        self.url = url
        self.prefix = prefix
        self._r: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._save = self._r.register_script(_SAVE)
        self._delete = self._r.register_script(_DELETE)
        self._append = self._r.register_script(_APPEND)
        self._max_key = f"{prefix}max_epoch"
        self._fence_key = f"{prefix}fence"  # writes accepted and refused, for the loadtest

    def _key(self, key: str) -> str:
        return f"{self.prefix}state:{key}"

    def _journal(self, key: str) -> str:
        return f"{self.prefix}journal:{key}"

    def load(self, key: str) -> StoredState | None:
        try:
            # MULTI/EXEC: the record and its journal as of one instant.
            pipe = self._r.pipeline(transaction=True)
            pipe.hmget(self._key(key), "epoch", "owner", "blob")
            pipe.lrange(self._journal(key), 0, -1)
            row, journal = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"load {key!r}: {exc}") from exc
        if row[0] is None:
            return None
        return StoredState(
            int(row[0]),
            row[1].decode() if row[1] else "",
            bytes(row[2] or b""),
            tuple(bytes(e) for e in journal),
        )

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        try:
            res = self._save(
                keys=[self._key(key), self._max_key, self._fence_key, self._journal(key)],
                args=[epoch, owner, blob],
            )
        except redis.RedisError as exc:
            raise StoreError(f"save {key!r}: {exc}") from exc
        if int(res[0]) == 0:
            raise StaleEpoch(key, epoch, int(res[1]), res[2].decode() if res[2] else "")

    def append_journal(self, items: Sequence[Append]) -> list[StaleEpoch | None]:
        if not items:
            return []
        keys: list[str] = []
        args: list[Any] = []
        for key, epoch, owner, entry in items:
            keys += [self._key(key), self._journal(key)]
            args += [epoch, owner, entry]
        try:
            res = self._append(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreError(f"append to the journal of {len(items)} keys: {exc}") from exc
        out: list[StaleEpoch | None] = []
        for (key, epoch, _, _), r in zip(items, res, strict=True):
            if int(r[0]) == 1:
                out.append(None)
            else:
                out.append(StaleEpoch(key, epoch, int(r[1]), r[2].decode() if r[2] else ""))
        return out

    def delete(self, key: str, epoch: int, owner: str) -> None:
        try:
            res = self._delete(keys=[self._key(key), self._journal(key)], args=[epoch, owner])
        except redis.RedisError as exc:
            raise StoreError(f"delete {key!r}: {exc}") from exc
        if int(res[0]) == 0:
            raise StaleEpoch(key, epoch, int(res[1]), res[2].decode() if res[2] else "")

    def max_epoch(self) -> int:
        try:
            v = self._r.get(self._max_key)
        except redis.RedisError as exc:
            raise StoreError(f"max_epoch: {exc}") from exc
        return int(v or 0)

    def fence_counts(self) -> dict[str, int]:
        """Writes the fence accepted and refused since the store began (``save`` only)."""
        try:
            raw = self._r.hgetall(self._fence_key)
        except redis.RedisError as exc:
            raise StoreError(f"fence counts: {exc}") from exc
        return {k.decode(): int(v) for k, v in raw.items()}

    def counts(self) -> dict[str, int]:
        """Each key's ``count`` (the counter app's state): the loadtest's ground truth."""
        out: dict[str, int] = {}
        try:
            for rk in self._r.scan_iter(match=f"{self.prefix}state:*", count=1000):
                key = rk.decode()[len(self.prefix) + 6 :]
                rec = self.load(key)
                state = current(rec.blob, rec.journal).get("state") if rec and rec.blob else None
                if isinstance(state, dict) and "count" in state:
                    out[key] = int(state["count"])
        except redis.RedisError as exc:
            raise StoreError(f"counts: {exc}") from exc
        return out

    def close(self) -> None:
        self._r.close()


def open_store(spec: str) -> Any:
    """The store a backend's ``store`` setting names: a redis:// URL or an SQLite path."""
    if spec.startswith(("redis://", "rediss://")):
        return RedisStore(spec)
    from backend.store import SQLiteStore

    return SQLiteStore(spec)
