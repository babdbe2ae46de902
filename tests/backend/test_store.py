from typing import Any

import pytest

from backend.store import SQLiteStore, StaleEpoch


def test_fenced_writes(store):
    store.save("k", 5, b"a")
    store.save("k", 5, b"b")  # same epoch: the owner writing again
    store.save("k", 7, b"c")  # a newer owner
    with pytest.raises(StaleEpoch) as exc:
        store.save("k", 6, b"stale")  # the old owner, fenced off
    assert exc.value.stored == 7
    assert store.load("k") == (7, b"c")
    with pytest.raises(StaleEpoch):
        store.delete("k", 6)
    store.delete("k", 7)
    assert store.load("k") is None


def test_shared_between_processes_wal(tmp_path):
    a, b = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    a.save("k", 1, b"x")
    assert b.load("k") == (1, b"x")
    b.save("k", 2, b"y")
    with pytest.raises(StaleEpoch):
        a.save("k", 1, b"z")
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
    assert all(s.load(f"k{i}") == (1, b"x") for i in range(6))
    s.close()


def _open_and_write(path: str, i: int, start: Any) -> None:
    start.wait(20)  # all at the same moment, as backends started together
    s = SQLiteStore(path)
    s.save(f"k{i}", 1, b"x")
    s.close()
