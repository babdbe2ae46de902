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
