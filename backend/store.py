"""The state store: one fenced record per routing key.

A record holds the key's app state and its sessions' replay buffers, written
with the epoch of the writer's ownership and the writer's node id. The fence
is strict: a write is accepted only at a **higher** epoch than the stored one,
or at the **same** epoch by the **same** owner. So a node that lost a key can
never overwrite what the new owner wrote, and two nodes can never both write at
one epoch. A move's source writes the key's state *for* the destination (owner
= destination, epoch = the move's), which fences the source off at once.

Write-through adds a **journal** per key (:mod:`backend.journal`): entries
appended after the record, each describing what one commit changed. An append
is fenced harder than a record: it is accepted only if the stored record is the
appender's own at the appender's epoch (same epoch, same owner), so an owner
that was fenced off (or whose record was replaced by a handoff) cannot add to
another owner's history. :meth:`StateStore.append_journal` takes the entries of
many keys and writes them in one transaction (group commit), each checked on
its own. Writing a record (``save``) clears the key's journal in the same
transaction: the record holds everything the journal said (compaction). ``load``
returns the record with its journal, read together.

The interface is small so a networked store (Redis: a Lua compare-and-set)
can replace SQLite; :class:`MemoryStore` is the same contract in memory, for the
simulator and tests.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

__all__ = [
    "Append",
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
    journal: tuple[bytes, ...] = ()  # entries appended since the record, oldest first


# One journal append: (key, epoch, owner, entry).
Append = tuple[str, int, str, bytes]


class StateStore(Protocol):
    def load(self, key: str) -> StoredState | None:
        """The stored record of a key, or None. StoreError if it cannot be read."""

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        """Store a blob under the fence (see the module doc), else raise StaleEpoch."""

    def append_journal(self, items: Sequence[Append]) -> list[StaleEpoch | None]:
        """Append journal entries in one transaction; per item None (written) or the
        StaleEpoch that refused it (the key's record is not the appender's own at its
        epoch). StoreError if the transaction failed (nothing was written)."""

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


def appendable(stored: StoredState | None, epoch: int, owner: str) -> bool:
    """The journal's fence: only the owner of the stored record, at its epoch."""
    return stored is not None and stored.epoch == epoch and stored.owner == owner


def refused(key: str, epoch: int, stored: StoredState | None) -> StaleEpoch:
    return StaleEpoch(
        key, epoch, -1 if stored is None else stored.epoch, "" if stored is None else stored.owner
    )


class MemoryStore:
    """The store contract in a dict (the simulator's store; it survives node crashes)."""

    def __init__(self) -> None:
        self.records: dict[str, StoredState] = {}
        self.journals: dict[str, list[bytes]] = {}
        self.writes = 0
        self.refused = 0

    def load(self, key: str) -> StoredState | None:
        rec = self.records.get(key)
        journal = self.journals.get(key)
        return rec._replace(journal=tuple(journal)) if rec is not None and journal else rec

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        cur = self.records.get(key)
        if not accepts(cur, epoch, owner):
            self.refused += 1
            assert cur is not None
            raise StaleEpoch(key, epoch, cur.epoch, cur.owner)
        self.records[key] = StoredState(epoch, owner, blob)
        self.journals.pop(key, None)
        self.writes += 1

    def append_journal(self, items: Sequence[Append]) -> list[StaleEpoch | None]:
        out: list[StaleEpoch | None] = []
        for key, epoch, owner, entry in items:
            cur = self.records.get(key)
            if not appendable(cur, epoch, owner):
                self.refused += 1
                out.append(refused(key, epoch, cur))
                continue
            self.journals.setdefault(key, []).append(entry)
            self.writes += 1
            out.append(None)
        return out

    def delete(self, key: str, epoch: int, owner: str) -> None:
        cur = self.records.get(key)
        if not accepts(cur, epoch, owner):
            assert cur is not None
            raise StaleEpoch(key, epoch, cur.epoch, cur.owner)
        self.records.pop(key, None)
        self.journals.pop(key, None)

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
                # Write-through's journal, clustered by key: a key's entries sit together,
                # so removing them at compaction touches few pages (with a rowid table
                # and an index, one page per entry: the keys' entries interleave).
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS journal ("
                    " key TEXT NOT NULL, seq INTEGER NOT NULL, entry BLOB NOT NULL,"
                    " PRIMARY KEY (key, seq)) WITHOUT ROWID"
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

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def load(self, key: str) -> StoredState | None:
        try:
            with self._lock:
                # One read transaction: the record and its journal as of one instant.
                self._db.execute("BEGIN")
                try:
                    row = self._db.execute(
                        "SELECT epoch, owner, blob FROM keystate WHERE key=?", (key,)
                    ).fetchone()
                    journal = (
                        ()
                        if row is None
                        else tuple(
                            bytes(r[0])
                            for r in self._db.execute(
                                "SELECT entry FROM journal WHERE key=? ORDER BY seq", (key,)
                            )
                        )
                    )
                finally:
                    self._rollback()
        except sqlite3.Error as exc:
            raise StoreError(f"load {key!r}: {exc}") from exc
        if row is None:
            return None
        return StoredState(int(row[0]), str(row[1]), bytes(row[2]), journal)

    def save(self, key: str, epoch: int, owner: str, blob: bytes) -> None:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    # Insert, or update only where the fence lets us; a record written
                    # replaces the journal too (it holds all the journal said).
                    cur = self._db.execute(
                        "INSERT INTO keystate(key, epoch, owner, blob) VALUES(?,?,?,?) "
                        "ON CONFLICT(key) DO UPDATE SET epoch=excluded.epoch,"
                        " owner=excluded.owner, blob=excluded.blob"
                        " WHERE excluded.epoch > keystate.epoch"
                        " OR (excluded.epoch = keystate.epoch AND excluded.owner = keystate.owner)",
                        (key, epoch, owner, blob),
                    )
                    fenced = cur.rowcount == 0
                    if not fenced:
                        self._db.execute("DELETE FROM journal WHERE key=?", (key,))
                    self._db.execute("COMMIT")
                finally:
                    self._rollback()
        except sqlite3.Error as exc:
            raise StoreError(f"save {key!r}: {exc}") from exc
        if fenced:
            self._raise_stale(key, epoch)

    def append_journal(self, items: Sequence[Append]) -> list[StaleEpoch | None]:
        if not items:
            return []
        done: list[bool] = []
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for key, epoch, owner, entry in items:
                        # Fenced in the statement: written only under the appender's record.
                        cur = self._db.execute(
                            "INSERT INTO journal(key, seq, entry) SELECT ?,"
                            " coalesce((SELECT max(seq) FROM journal WHERE key=?), 0) + 1, ?"
                            " WHERE EXISTS (SELECT 1 FROM keystate"
                            " WHERE key=? AND epoch=? AND owner=?)",
                            (key, key, entry, key, epoch, owner),
                        )
                        done.append(cur.rowcount == 1)
                    self._db.execute("COMMIT")
                finally:
                    self._rollback()
        except sqlite3.Error as exc:
            raise StoreError(f"append to the journal of {len(items)} keys: {exc}") from exc
        out: list[StaleEpoch | None] = []
        for (key, epoch, _, _), ok in zip(items, done, strict=True):
            out.append(None if ok else refused(key, epoch, self.load(key)))
        return out

    def delete(self, key: str, epoch: int, owner: str) -> None:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    cur = self._db.execute(
                        "DELETE FROM keystate WHERE key=? AND (epoch<? OR (epoch=? AND owner=?))",
                        (key, epoch, epoch, owner),
                    )
                    fenced = cur.rowcount == 0
                    if not fenced:
                        self._db.execute("DELETE FROM journal WHERE key=?", (key,))
                    self._db.execute("COMMIT")
                finally:
                    self._rollback()
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
