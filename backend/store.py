"""The state store: one fenced record per routing key.

A record holds the key's app state and its sessions' replay buffers, written
with the epoch of the writer's ownership and the writer's node id. The fence
is strict: a write is accepted only at a **higher** epoch than the stored one,
or at the **same** epoch by the **same** owner. So a node that lost a key can
never overwrite what the new owner wrote, and two nodes can never both write at
one epoch. A move's source writes the key's state *for* the destination (owner
= destination, epoch = the move's), which fences the source off at once.

The interface is small so a networked store (Redis: a Lua compare-and-set)
can replace SQLite; :class:`MemoryStore` is the same contract in memory, for the
simulator and tests.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import NamedTuple, Protocol

__all__ = [
    "MemoryStore",
    "SQLiteStore",
    "StaleEpoch",
    "StateStore",
    "StoreError",
    "StoredState",
]


class StaleEpoch(Exception):
    """A write was fenced off: the store holds a newer epoch (or another owner's at this one)."""

    def __init__(self, key: str, epoch: int, stored: int, owner: str = ""):
        super().__init__(
            f"key {key!r}: write at epoch {epoch} rejected, store has {stored}"
            + (f" owned by {owner!r}" if owner else "")
        )
        self.key, self.epoch, self.stored, self.owner = key, epoch, stored, owner


class StoreError(Exception):
    """The store could not carry out a read or write (I/O error, full disk, lock timeout)."""


class StoredState(NamedTuple):
    epoch: int
    owner: str
    blob: bytes


class StateStore(Protocol):
    def load(self, key: str) -> StoredState | None:
        """The stored record of a key, or None. StoreError if it cannot be read."""

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        """Store a blob under the fence (see the module doc), else raise StaleEpoch."""

    def delete(self, key: str, epoch: int, owner: str) -> None:
        """Forget a key (fenced like save)."""

    def max_epoch(self) -> int:
        """The highest epoch of any record (0 for an empty store)."""

    def close(self) -> None: ...


def accepts(stored: StoredState | None, epoch: int, owner: str) -> bool:
    """The fence, in one place."""
    return (
        stored is None or epoch > stored.epoch or (epoch == stored.epoch and owner == stored.owner)
    )


class MemoryStore:
    """The store contract in a dict (the simulator's store; it survives node crashes)."""

    def __init__(self) -> None:
        self.records: dict[str, StoredState] = {}
        self.writes = 0
        self.refused = 0

    def load(self, key: str) -> StoredState | None:
        return self.records.get(key)

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        cur = self.records.get(key)
        if not accepts(cur, epoch, owner):
            self.refused += 1
            assert cur is not None
            raise StaleEpoch(key, epoch, cur.epoch, cur.owner)
        self.records[key] = StoredState(epoch, owner, blob)
        self.writes += 1

    def delete(self, key: str, epoch: int, owner: str) -> None:
        cur = self.records.get(key)
        if not accepts(cur, epoch, owner):
            assert cur is not None
            raise StaleEpoch(key, epoch, cur.epoch, cur.owner)
        self.records.pop(key, None)

    def max_epoch(self) -> int:
        return max((r.epoch for r in self.records.values()), default=0)

    def close(self) -> None:
        pass


class SQLiteStore:
    """SQLite in WAL mode: several backend processes on one machine may share the file.

    Calls are short and synchronous; WAL with ``synchronous=NORMAL`` makes a
    write a few tens of microseconds, fine on the event loop for this scale.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._setup()

    def _setup(self, attempts: int = 60) -> None:
        """Switch to WAL and create the table. Several processes starting on a new file
        race for the lock this needs, and SQLite answers some of them "locked" at once
        instead of waiting: retry briefly (at start only)."""
        for attempt in range(attempts):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS keystate ("
                    " key TEXT PRIMARY KEY, epoch INTEGER NOT NULL, blob BLOB NOT NULL,"
                    " owner TEXT NOT NULL DEFAULT '')"
                )
                cols = {r[1] for r in self._db.execute("PRAGMA table_info(keystate)")}
                if "owner" not in cols:  # a store written before owners were recorded
                    self._db.execute(
                        "ALTER TABLE keystate ADD COLUMN owner TEXT NOT NULL DEFAULT ''"
                    )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if attempt == attempts - 1:
                    raise
                time.sleep(min(0.01 * (attempt + 1), 0.2))

    def load(self, key: str) -> StoredState | None:
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT epoch, owner, blob FROM keystate WHERE key=?", (key,)
                ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"load {key!r}: {exc}") from exc
        return None if row is None else StoredState(int(row[0]), str(row[1]), bytes(row[2]))

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        try:
            with self._lock:
                # One statement: insert, or update only where the fence lets us.
                cur = self._db.execute(
                    "INSERT INTO keystate(key, epoch, owner, blob) VALUES(?,?,?,?) "
                    "ON CONFLICT(key) DO UPDATE SET epoch=excluded.epoch, owner=excluded.owner,"
                    " blob=excluded.blob WHERE excluded.epoch > keystate.epoch"
                    " OR (excluded.epoch = keystate.epoch AND excluded.owner = keystate.owner)",
                    (key, epoch, owner, blob),
                )
                fenced = cur.rowcount == 0
        except sqlite3.Error as exc:
            raise StoreError(f"save {key!r}: {exc}") from exc
        if fenced:
            self._raise_stale(key, epoch)

    def delete(self, key: str, epoch: int, owner: str) -> None:
        try:
            with self._lock:
                cur = self._db.execute(
                    "DELETE FROM keystate WHERE key=? AND (epoch<? OR (epoch=? AND owner=?))",
                    (key, epoch, epoch, owner),
                )
                fenced = cur.rowcount == 0
        except sqlite3.Error as exc:
            raise StoreError(f"delete {key!r}: {exc}") from exc
        if fenced and self.load(key) is not None:
            self._raise_stale(key, epoch)

    def max_epoch(self) -> int:
        try:
            with self._lock:
                row = self._db.execute("SELECT max(epoch) FROM keystate").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"max_epoch: {exc}") from exc
        return int(row[0] or 0)

    def _raise_stale(self, key: str, epoch: int) -> None:
        stored = self.load(key)
        raise StaleEpoch(
            key, epoch, -1 if stored is None else stored.epoch, stored.owner if stored else ""
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
