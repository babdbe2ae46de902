"""The Redis store keeps the same fence as SQLite, against a real redis-server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.redis_store import RedisStore, open_store
from backend.store import MemoryStore, SQLiteStore, StaleEpoch, StoredState, StoreError, accepts
from loadtest.services import RedisServer, missing
from tests.backend.conftest import check_journal_fence

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(missing("redis-server") is not None, reason=str(missing("redis-server"))),
]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def rstore(redis_server, request):
    s = RedisStore(redis_server.url, prefix=f"t:{request.node.name}:")
    yield s
    s.close()


def test_fenced_writes(rstore):
    rstore.save("k", 5, "a", b"a")
    rstore.save("k", 5, "a", b"b")
    with pytest.raises(StaleEpoch) as exc:
        rstore.save("k", 5, "b", b"x")
    assert exc.value.stored == 5 and exc.value.owner == "a"
    rstore.save("k", 7, "b", b"c")
    with pytest.raises(StaleEpoch):
        rstore.save("k", 6, "a", b"stale")
    assert rstore.load("k") == StoredState(7, "b", b"c")
    with pytest.raises(StaleEpoch):
        rstore.delete("k", 7, "a")
    rstore.delete("k", 7, "b")
    assert rstore.load("k") is None
    rstore.save("m", 9, "a", b"\x00\xff binary")
    assert rstore.load("m") == StoredState(9, "a", b"\x00\xff binary")
    assert rstore.max_epoch() == 9


ops = st.lists(
    st.tuples(st.integers(0, 6), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=25
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_redis_sqlite_and_memory_fence_alike(redis_server, tmp_path_factory, seq):
    mem = MemoryStore()
    sql = SQLiteStore(tmp_path_factory.mktemp("s") / "s.db")
    red = RedisStore(redis_server.url, prefix=f"h:{id(seq)}:{len(seq)}:")
    try:
        red.delete("k", 1 << 40, "x")
        for epoch, owner in seq:
            before = mem.load("k")
            results = []
            for s in (mem, sql, red):
                try:
                    s.save("k", epoch, owner, f"{epoch}{owner}".encode())
                    results.append(True)
                except StaleEpoch:
                    results.append(False)
            assert results == [accepts(before, epoch, owner)] * 3
            assert mem.load("k") == sql.load("k") == red.load("k")
    finally:
        sql.close()
        red.close()


def test_an_unreachable_redis_is_a_store_error(tmp_path):
    s = RedisStore("redis://127.0.0.1:9/0", timeout_s=0.5)
    with pytest.raises(StoreError):
        s.load("k")
    with pytest.raises(StoreError):
        s.save("k", 1, "a", b"x")
    s.close()


def test_a_restarted_redis_keeps_acknowledged_writes(tmp_path):
    """appendfsync always: what save() returned for survives a kill -9 of Redis."""
    srv = RedisServer(tmp_path / "r").start()
    try:
        s = RedisStore(srv.url)
        for i in range(50):
            s.save(f"k{i}", 1, "a", b"v%d" % i)
        s.close()
        srv.kill()
        srv.proc = None
        srv.start()  # same port and folder: the append-only file replays
        s = RedisStore(srv.url)
        assert all(s.load(f"k{i}") == StoredState(1, "a", b"v%d" % i) for i in range(50))
        s.close()
    finally:
        srv.stop()


def test_open_store_picks_by_spec(redis_server, tmp_path):
    assert isinstance(open_store(redis_server.url), RedisStore)
    assert isinstance(open_store(str(tmp_path / "x.db")), SQLiteStore)


def test_fence_counts_and_counter_values(rstore):
    rstore.save("c1", 1, "a", b'{"state": {"count": 3}}')
    rstore.save("c2", 1, "a", b'{"state": {"count": 5}}')
    with pytest.raises(StaleEpoch):
        rstore.save("c1", 1, "b", b'{"state": {"count": 9}}')
    assert rstore.fence_counts() == {"accepted": 2, "refused": 1}
    assert rstore.counts() == {"c1": 3, "c2": 5}


def test_journal_appends_are_fenced(rstore):
    check_journal_fence(rstore)


def test_journal_in_counts(rstore):
    """The loadtest's ground truth reads the record with its journal replayed."""
    rstore.save("c", 1, "a", b'{"state": {"count": 3}, "sessions": {}}')
    rstore.append_journal([("c", 1, "a", b'{"st": {"count": 4}, "s": {}}')])
    assert rstore.counts() == {"c": 4}
