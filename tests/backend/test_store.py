import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.store import MemoryStore, SQLiteStore, StaleEpoch, StoredState, StoreError, accepts
from tests.backend.conftest import check_journal_fence


def test_fenced_writes(store):
    store.save("k", 5, "a", b"a")
    store.save("k", 5, "a", b"b")  # same epoch, same owner: writing again
    with pytest.raises(StaleEpoch) as exc:
        store.save("k", 5, "b", b"x")  # same epoch, another owner: two owners at once
    assert exc.value.stored == 5 and exc.value.owner == "a"
    store.save("k", 7, "b", b"c")  # a newer owner
    with pytest.raises(StaleEpoch) as exc:
        store.save("k", 6, "a", b"stale")  # the old owner, fenced off
    assert exc.value.stored == 7
    with pytest.raises(StaleEpoch):
        store.save("k", 7, "a", b"stale")  # nor at the new owner's epoch
    assert store.load("k") == StoredState(7, "b", b"c")
    with pytest.raises(StaleEpoch):
        store.delete("k", 6, "a")
    with pytest.raises(StaleEpoch):
        store.delete("k", 7, "a")
    store.delete("k", 7, "b")
    assert store.load("k") is None
    store.save("m", 3, "a", b"m")
    store.save("n", 9, "b", b"n")
    assert store.max_epoch() == 9


def test_a_handoff_write_fences_the_source(store):
    """The source of a move writes the key at the move's epoch *for* the destination:
    from then on the source cannot write at all, the destination can."""
    store.save("k", 4, "src", b"v1")
    store.save("k", 8, "dst", b"v2")  # the release flush, for dst
    with pytest.raises(StaleEpoch):
        store.save("k", 8, "src", b"late")
    with pytest.raises(StaleEpoch):
        store.save("k", 4, "src", b"late")
    store.save("k", 8, "dst", b"v3")


ops = st.lists(
    st.tuples(st.integers(0, 6), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=30
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_memory_and_sqlite_fence_alike(tmp_path_factory, seq):
    """Any sequence of writes: both stores accept and refuse the same ones, and never
    let two owners write at one epoch or anyone write below the stored epoch."""
    mem = MemoryStore()
    sql = SQLiteStore(tmp_path_factory.mktemp("s") / "s.db")
    try:
        for epoch, owner in seq:
            before = mem.load("k")
            results = []
            for s in (mem, sql):
                try:
                    s.save("k", epoch, owner, f"{epoch}{owner}".encode())
                    results.append(True)
                except StaleEpoch:
                    results.append(False)
            assert results[0] == results[1] == accepts(before, epoch, owner)
            assert mem.load("k") == sql.load("k")
    finally:
        sql.close()


def test_store_errors_are_typed(tmp_path):
    s = SQLiteStore(tmp_path / "s.db")
    s.close()
    with pytest.raises(StoreError):
        s.load("k")
    with pytest.raises(StoreError):
        s.save("k", 1, "a", b"x")


def test_an_old_store_file_gains_owners(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE keystate (key TEXT PRIMARY KEY, epoch INTEGER NOT NULL, blob BLOB)")
    db.execute("INSERT INTO keystate VALUES ('k', 3, x'7b7d')")
    db.commit()
    db.close()
    s = SQLiteStore(path)
    assert s.load("k") == StoredState(3, "", b"{}")
    s.save("k", 4, "a", b"x")
    s.close()


def test_shared_between_processes_wal(tmp_path):
    a, b = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    a.save("k", 1, "a", b"x")
    assert b.load("k") == StoredState(1, "a", b"x")
    b.save("k", 2, "b", b"y")
    with pytest.raises(StaleEpoch):
        a.save("k", 1, "a", b"z")
    assert a._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a.close()
    b.close()


def test_many_processes_open_a_new_store_at_once(tmp_path):
    """Backends started together on a fresh file: none fails with "database is locked"."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "fresh.db")
    start = ctx.Barrier(6)
    procs = [ctx.Process(target=_open_and_write, args=(path, i, start)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 6
    s = SQLiteStore(path)
    assert all(s.load(f"k{i}") == StoredState(1, "n", b"x") for i in range(6))
    s.close()


def _open_and_write(path: str, i: int, start: Any) -> None:
    start.wait(20)  # all at the same moment, as backends started together
    s = SQLiteStore(path)
    s.save(f"k{i}", 1, "n", b"x")
    s.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_journal_appends_are_fenced(tmp_path, kind):
    s = SQLiteStore(tmp_path / "j.db") if kind == "sqlite" else MemoryStore()
    try:
        check_journal_fence(s)
    finally:
        s.close()


def test_journal_survives_reopening_and_is_shared(tmp_path):
    """Another process's store (another connection to the file) sees the journal."""
    a, b = SQLiteStore(tmp_path / "j.db"), SQLiteStore(tmp_path / "j.db")
    try:
        a.save("k", 1, "n", b"r")
        a.append_journal([("k", 1, "n", b"e1"), ("k", 1, "n", b"e2")])
        assert b.load("k") == StoredState(1, "n", b"r", (b"e1", b"e2"))
        # Rowids stay in order as other keys come and go.
        b.save("x", 1, "n", b"x")
        b.append_journal([("x", 1, "n", b"x1")])
        b.save("x", 1, "n", b"x2")
        a.append_journal([("k", 1, "n", b"e3")])
        assert b.load("k").journal == (b"e1", b"e2", b"e3")
    finally:
        a.close()
        b.close()
