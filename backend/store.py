"""The state store: one fenced record per routing key.

A record holds the key's app state and its sessions' replay buffers, written
with the epoch of the writer's ownership. A write carrying an older epoch than
the stored one is rejected (:class:`StaleEpoch`): a node that lost a key can
never overwrite what the new owner wrote. The interface is three methods so a
Redis implementation (a Lua compare-and-set) can replace SQLite.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

__all__ = [
    "SQLiteStore",
    "StaleEpoch",
    "StateStore",
]


class StaleEpoch(Exception):
    """A write was fenced off: the store holds a newer epoch for this key."""

    def __init__(self, key: str, epoch: int, stored: int):
        super().__init__(f"key {key!r}: write at epoch {epoch} rejected, store has {stored}")
        self.key, self.epoch, self.stored = key, epoch, stored


class StateStore(Protocol):
    def load(self, key: str) -> tuple[int, bytes] | None:
        """The stored (epoch, blob) of a key, or None."""

    def save(self, key: str, epoch: int, blob: bytes) -> None:
        """Store a blob if ``epoch`` >= the stored epoch, else raise StaleEpoch."""

    def delete(self, key: str, epoch: int) -> None:
        """Forget a key (fenced like save)."""

    def close(self) -> None: ...


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
                    " key TEXT PRIMARY KEY, epoch INTEGER NOT NULL, blob BLOB NOT NULL)"
                )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if attempt == attempts - 1:
                    raise
                time.sleep(min(0.01 * (attempt + 1), 0.2))

    def load(self, key: str) -> tuple[int, bytes] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT epoch, blob FROM keystate WHERE key=?", (key,)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def save(self, key: str, epoch: int, blob: bytes) -> None:
        with self._lock:
            # One statement: insert, or update only when our epoch is not older.
            cur = self._db.execute(
                "INSERT INTO keystate(key, epoch, blob) VALUES(?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET epoch=excluded.epoch, blob=excluded.blob "
                "WHERE excluded.epoch >= keystate.epoch",
                (key, epoch, blob),
            )
            if cur.rowcount == 0:
                self._raise_stale(key, epoch)

    def delete(self, key: str, epoch: int) -> None:
        with self._lock:
            cur = self._db.execute("DELETE FROM keystate WHERE key=? AND epoch<=?", (key, epoch))
            if cur.rowcount == 0 and self.load_epoch(key) is not None:
                self._raise_stale(key, epoch)

    def load_epoch(self, key: str) -> int | None:
        row = self._db.execute("SELECT epoch FROM keystate WHERE key=?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _raise_stale(self, key: str, epoch: int) -> None:
        stored = self.load_epoch(key)
        raise StaleEpoch(key, epoch, -1 if stored is None else stored)

    def close(self) -> None:
        with self._lock:
            self._db.close()
