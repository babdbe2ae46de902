"""Write-through's journal: entries, replay, group commit, held output, crash recovery."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.apps.chat import ChatApp
from backend.apps.counter import CounterApp
from backend.apps.echo import EchoApp
from backend.journal import current, encode_entry, replay
from backend.node import Node
from backend.session_conn import SessionConn
from backend.store import MemoryStore, StoreError
from clientlib.kernel.session_protocol import CloseCode, Hello, Msg, decode, encode
from tests.backend.conftest import Clock, FakeWire, make_node

pytestmark = pytest.mark.timeout(60)


def in_memory(node: Node, key: str) -> dict[str, Any]:
    """What persist() would write for ``key`` now."""
    ak = node.keys[key]
    return orjson.loads(
        orjson.dumps(
            {
                "state": node.app.dump_state(ak.ctx.state),
                "sessions": {sid: s.to_state() for sid, s in ak.sessions.items()},
            }
        )
    )


def stored(store: Any, key: str) -> dict[str, Any]:
    rec = store.load(key)
    assert rec is not None
    return current(rec.blob, rec.journal)


def same_but_lazy_acks(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Stored == in memory, except that an ack alone is stored with the key's next change:
    the store may still hold messages the client acknowledged since (resent on a resume,
    dropped by the client as duplicates)."""
    assert got["state"] == want["state"]
    assert got["sessions"].keys() == want["sessions"].keys()
    for sid, w in want["sessions"].items():
        g = got["sessions"][sid]
        assert (g["in"], g["sent"], g["out"]["next_seq"]) == (
            w["in"],
            w["sent"],
            w["out"]["next_seq"],
        )
        gi, wi = g["out"]["items"], w["out"]["items"]
        extra = len(gi) - len(wi)
        assert extra >= 0 and gi[extra:] == wi
        acked = wi[0][0] - 1 if wi else w["out"]["next_seq"] - 1
        assert all(seq <= acked for seq, _ in gi[:extra])


# ---------------------------------------------------------------------- entries


def test_replay_applies_entries_in_order():
    rec = {
        "state": {"count": 1},
        "sessions": {"a": {"in": 1, "out": {"next_seq": 2, "items": [[1, "x"]]}, "sent": 1}},
    }
    e1 = encode_entry({"count": 2}, {"a": [2, 1, 2, 2, ['"y"']], "b": [0, 0, 0, 1, ['"h"']]})
    e2 = encode_entry({"count": 3}, {"a": None, "b": [1, 1, 2, 2, ['"z"']]})
    assert replay(orjson.loads(orjson.dumps(rec)), [e1]) == {
        "state": {"count": 2},
        "sessions": {
            "a": {"in": 2, "out": {"next_seq": 3, "items": [[2, '"y"']]}, "sent": 2},
            "b": {"in": 0, "out": {"next_seq": 2, "items": [[1, '"h"']]}, "sent": 0},
        },
    }
    assert replay(orjson.loads(orjson.dumps(rec)), [e1, e2]) == {
        "state": {"count": 3},
        "sessions": {"b": {"in": 1, "out": {"next_seq": 3, "items": [[2, '"z"']]}, "sent": 2}},
    }


def committing(node: Node) -> list[int]:
    """Make ``node`` commit only when the test says (as the server does once per turn)."""
    calls: list[int] = []
    node.schedule_commit = lambda: calls.append(1)
    return calls


# Operations on one key: a new session, a message from session i, an ack from session
# i of a share of what it was sent, a disconnect, an end (close 1000), a resume, a commit.
op = st.one_of(
    st.tuples(st.just("join")),
    st.tuples(st.just("msg"), st.integers(0, 7)),
    st.tuples(st.just("ack"), st.integers(0, 7), st.floats(0, 1)),
    st.tuples(st.just("leave"), st.integers(0, 7)),
    st.tuples(st.just("end"), st.integers(0, 7)),
    st.tuples(st.just("resume"), st.integers(0, 7)),
    st.tuples(st.just("commit")),
)


@settings(max_examples=150, deadline=None)
@given(app=st.sampled_from(["chat", "counter"]), ops=st.lists(op, max_size=60))
def test_record_and_journal_replay_is_the_state_as_applied(app, ops):
    """After every commit, the stored record with its journal replayed is what the node
    holds (acks alone aside, see same_but_lazy_acks), and a node that loads it (a crash
    and restart) holds the same: nothing acknowledged is lost."""
    store = MemoryStore()
    clock = Clock()
    node = make_node(
        store,
        clock,
        app=ChatApp() if app == "chat" else CounterApp(),
        durability="write-through",
        journal_max_bytes=2048,  # compactions too
        replay_max_count=16,
    )
    committing(node)
    wires: list[tuple[Any, FakeWire | None]] = []  # (session, its wire or None)
    n = 0
    for o in ops:
        live = [(i, s, w) for i, (s, w) in enumerate(wires) if "k" in node.keys]
        if o[0] == "join" and len(wires) < 8:
            w = FakeWire()
            s, _ = node.attach("k", 0, Hello(None, 0), w)
            wires.append((s, w))
        elif o[0] == "commit":
            node.commit()
            if "k" in node.keys:
                same_but_lazy_acks(stored(store, "k"), in_memory(node, "k"))
        elif live:
            i, s, w = live[o[1] % len(live)]
            ak = node.keys["k"]
            if ak.sessions.get(s.sid) is not s:
                continue
            if o[0] == "msg" and w is not None and node.can_process(s):
                n += 1
                node.receive(s, Msg(s.inbox.last + 1, s.outbox.acked, {"text": f"m{n}", "n": n}))
            elif o[0] == "ack" and w is not None:
                upto = s.outbox.acked + int((s.outbox.last_seq - s.outbox.acked) * o[2])
                node.receive_ack(s, upto)
            elif o[0] == "leave" and w is not None:
                node.detach(s, w)
                wires[i] = (s, None)
            elif o[0] == "end" and w is not None:
                node.end(s, w)
            elif o[0] == "resume" and w is None:
                w2 = FakeWire()
                s2, welcome = node.attach("k", 0, Hello(s.sid, s.outbox.acked, s.inbox.last), w2)
                assert welcome.resumed
                wires[i] = (s2, w2)
    node.commit()
    if "k" not in node.keys:
        return
    want = in_memory(node, "k")
    same_but_lazy_acks(stored(store, "k"), want)
    # A crash now: a new node loads the record and replays the journal.
    fresh = make_node(
        store, clock, app=ChatApp() if app == "chat" else CounterApp(), durability="write-through"
    )
    fresh.activate("k", 0)
    same_but_lazy_acks(in_memory(fresh, "k"), want)


# ---------------------------------------------------------------------- the node


def test_an_entry_does_not_grow_with_sessions_or_unacked_windows():
    """The entry of one message is the same size with 1 or 100 sessions on the key, each
    with 20 unacknowledged replies; the whole record grows with them. (The echo app: its
    state and replies have the same size whatever the count.)"""
    sizes, records = [], []
    for n in (1, 100):
        store = MemoryStore()
        node = make_node(
            store, Clock(), app=EchoApp(), durability="write-through", journal_max_bytes=1 << 24
        )
        sessions = [node.attach("k", 0, Hello(None, 0), FakeWire())[0] for _ in range(n)]
        for s in sessions:
            for seq in range(1, 21):
                node.receive(s, Msg(seq, 0, {"n": seq}))
        before = len(store.journals["k"])
        node.receive(sessions[0], Msg(21, 0, {"n": 21}))
        assert len(store.journals["k"]) == before + 1
        sizes.append(len(store.journals["k"][-1]))
        records.append(len(orjson.dumps(in_memory(node, "k"))))
    assert sizes[0] == sizes[1]
    assert records[1] > 50 * records[0]


def test_group_commit_one_transaction_for_a_turn_then_the_acks():
    """Messages of several keys processed in one turn are appended in one store call, and
    no ack or reply leaves before it."""
    store = MemoryStore()
    calls: list[int] = []
    inner = store.append_journal

    def counting(items):
        calls.append(len(items))
        return inner(items)

    store.append_journal = counting  # type: ignore[method-assign]
    node = make_node(store, Clock(), durability="write-through")
    turns = committing(node)
    conns = []
    for k in ("a", "b", "c"):
        c = SessionConn(node, k, 0, lambda: None)
        c.receive(encode(Hello(None, 0)))
        conns.append(c)
    assert conns[0].frames_due() == []  # the new sessions are not stored yet: no welcome
    node.commit()  # the first turn's commit: the three keys' records
    assert all(len(c.frames_due()) == 1 for c in conns)  # the welcomes
    for c in conns:
        c.receive(b'{"t":"msg","seq":1,"ack":0,"d":{"n":1}}')
    assert turns and all(c.frames_due() == [] for c in conns)  # processed, held
    node.commit()
    assert calls == [3]  # one transaction for the three keys
    for c in conns:
        (frame,) = c.frames_due()
        reply = decode(frame)
        assert isinstance(reply, Msg) and reply.data == {"n": 1, "count": 1}
    assert all(len(store.journals[k]) == 1 for k in "abc")


def test_a_failed_commit_acknowledges_nothing_and_the_key_reloads():
    store = MemoryStore()
    node = make_node(store, Clock(), durability="write-through")
    committing(node)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    node.commit()
    node.receive(s, Msg(1, 0, {"n": 1}))
    node.commit()
    real = store.append_journal

    def broken(items):
        raise StoreError("disk full")

    store.append_journal = broken  # type: ignore[method-assign]
    node.receive(s, Msg(2, 0, {"n": 2}))
    node.commit()
    assert w.closed is not None and w.closed[0] == CloseCode.INTERNAL_ERROR
    assert "k" not in node.keys
    store.append_journal = real  # type: ignore[method-assign]
    _, welcome = node.attach("k", 0, Hello(s.sid, 1, 1), FakeWire())
    assert welcome.resumed and welcome.last == 1  # message 2 was never acknowledged


def test_a_fenced_off_owner_cannot_append():
    """An owner whose key was handed off (the record rewritten for another node) has its
    appends refused: the key is dropped with 4000-series NOT_OWNER, nothing acked."""
    store = MemoryStore()
    node = make_node(store, Clock(), "a", durability="write-through")
    committing(node)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    node.commit()
    store.save("k", 7, "b", store.load("k").blob)  # another node took the key at epoch 7
    node.receive(s, Msg(1, 0, {"n": 1}))
    node.commit()
    assert w.closed is not None and w.closed[0] == CloseCode.NOT_OWNER
    assert node.stats["stale_writes"] == 1
    assert store.load("k").journal == ()


def test_kill_after_acks_loses_nothing_acknowledged(tmp_path):
    """SQLite: what a node acknowledged (its output went out after the commit) is in the
    store when the process dies without writing anything more."""
    from backend.store import SQLiteStore

    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    node = make_node(store, Clock(), durability="write-through", journal_max_bytes=1 << 20)
    committing(node)
    conn = SessionConn(node, "k", 0, lambda: None)
    conn.receive(encode(Hello(None, 0)))
    node.commit()
    assert len(conn.frames_due()) == 1  # the welcome
    acked = 0
    for seq in range(1, 31):
        conn.receive(b'{"t":"msg","seq":%d,"ack":%d,"d":{"n":%d}}' % (seq, acked, seq))
        if seq % 3 == 0:
            node.commit()
            for f in conn.frames_due():
                m = decode(f)
                assert isinstance(m, Msg)
                acked = m.seq
    assert acked == 30 - 30 % 3
    assert store.load("k").journal  # written as a journal, not as records
    store.close()  # kill: nothing else is written
    again = SQLiteStore(path)
    fresh = make_node(again, Clock(), durability="write-through")
    sess, w = fresh.attach("k", 0, Hello(conn.session.sid, acked, 30), FakeWire())
    assert w.resumed and w.last == 30 and sess.inbox.last == 30
    assert fresh.keys["k"].ctx.state == {"count": 30}
    again.close()


def test_compaction_when_the_journal_outgrows_the_record_and_on_sweep():
    store = MemoryStore()
    clock = Clock()
    node = make_node(store, clock, durability="write-through", journal_max_bytes=1024)
    s, _ = node.attach("k", 0, Hello(None, 0), FakeWire())
    for seq in range(1, 60):
        node.receive(s, Msg(seq, seq - 1, {"n": seq}))
        assert sum(len(e) for e in store.journals.get("k", [])) <= 1024
    assert node.stats["compactions"] >= 1 and node.stats["journal_appends"] > 30
    assert stored(store, "k")["state"] == {"count": 59}
    clock.t += 6  # checkpoint_s: journals are compacted
    node.sweep(clock())
    assert "k" not in store.journals
    assert orjson.loads(store.load("k").blob)["state"] == {"count": 59}


class Unstorable(CounterApp):
    def dump_state(self, state: Any) -> Any:
        if state["count"] >= 2:
            return {"count": object()}  # not JSON
        return state


def test_a_state_that_cannot_be_stored_is_not_acknowledged():
    store = MemoryStore()
    node = make_node(store, Clock(), app=Unstorable(), durability="write-through")
    committing(node)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    node.receive(s, Msg(1, 0, {"n": 1}))
    node.commit()
    node.receive(s, Msg(2, 0, {"n": 2}))
    node.commit()
    assert w.closed is not None and w.closed[0] == CloseCode.INTERNAL_ERROR
    assert stored(store, "k")["state"] == {"count": 1}
