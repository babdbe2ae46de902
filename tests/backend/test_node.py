import orjson
import pytest

from backend.node import NotOwner
from clientlib.kernel.routing import static_table
from clientlib.kernel.session_protocol import (
    CloseCode,
    CloseHint,
    Hello,
    Msg,
    ProtocolError,
    decode,
)
from tests.backend.conftest import FakeWire, make_node


def send(node, session, seq, n, ack=0):
    node.receive(session, Msg(seq, ack, {"n": n}))


def replies(session):
    return [decode(f).data for f in session.outbox.frames(ack=0)]


def test_new_session_and_duplicates(store, clock):
    node = make_node(store, clock)
    w = FakeWire()
    s, welcome = node.attach("k", 0, Hello(None, 0), w)
    assert not welcome.resumed and welcome.last == 0
    send(node, s, 1, 1)
    send(node, s, 1, 1)  # resend: dropped
    send(node, s, 2, 2)
    assert [r["count"] for r in replies(s)] == [1, 2]
    assert node.stats["duplicates"] == 1
    with pytest.raises(ProtocolError):
        send(node, s, 4, 4)  # a gap


def test_resume_on_same_node(store, clock):
    node = make_node(store, clock)
    w1 = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w1)
    for i in range(1, 4):
        send(node, s, i, i)
    node.detach(s, w1)
    s2, welcome = node.attach("k", 0, Hello(s.sid, 1), FakeWire())
    assert welcome.resumed and welcome.last == 3 and s2 is s
    assert [r["count"] for r in replies(s2)] == [2, 3]  # 1 was acked by hello.last


def test_resume_after_handoff_to_another_node(store, clock):
    old, new = make_node(store, clock, "a"), make_node(store, clock, "b")
    w = FakeWire()
    s, _ = old.attach("k", 1, Hello(None, 0), w)
    for i in range(1, 6):
        send(old, s, i, i)
    assert old.release([("key", "k")], 2) == 1
    send(old, s, 6, 6)  # frozen: not processed, not acked
    assert s.inbox.last == 5
    assert old.commit_release([("key", "k")]) == 1
    assert w.closed is not None and w.closed[0] == CloseCode.MOVED
    assert CloseHint.decode(w.closed[1]).window_ms == 100  # one session: the shortest window
    s2, welcome = new.attach("k", 2, Hello(s.sid, 2), FakeWire())
    assert welcome.resumed and welcome.last == 5
    assert [r["count"] for r in replies(s2)] == [3, 4, 5]
    send(new, s2, 6, 6)
    assert replies(s2)[-1]["count"] == 6  # the counter continued exactly


def test_stale_owner_is_fenced(store, clock):
    old, new = (
        make_node(store, clock, "a", durability="write-through"),
        make_node(store, clock, "b"),
    )
    w = FakeWire()
    s, _ = old.attach("k", 1, Hello(None, 0), w)
    send(old, s, 1, 1)
    _n2, _ = new.attach("k", 3, Hello(None, 0), FakeWire())
    new.persist(new.keys["k"])  # the new owner wrote at epoch 3
    send(old, s, 2, 2)  # the old owner's write-through at epoch 1 is rejected
    assert old.stats["stale_writes"] == 1
    assert w.closed is not None and w.closed[0] == CloseCode.NOT_OWNER
    assert "k" not in old.keys
    with pytest.raises(NotOwner):
        old.activate("k", 1)


def test_replay_overflow_ends_the_session_explicitly(store, clock):
    node = make_node(store, clock, replay_max_count=4)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    for i in range(1, 5):
        send(node, s, i, i)
    assert not node.has_room(s)
    send(node, s, 5, 5)  # the 5th reply does not fit
    assert w.closed is not None and w.closed[0] == CloseCode.SEND_QUEUE_FULL
    assert node.stats["send_queue_full"] == 1
    _, welcome = node.attach("k", 0, Hello(s.sid, 0), FakeWire())
    assert not welcome.resumed


def test_hello_ahead_of_stored_state_is_not_resumed(store, clock):
    node = make_node(store, clock)
    s, _ = node.attach("k", 0, Hello(None, 0), FakeWire())
    _, welcome = node.attach("k", 0, Hello(s.sid, 50), FakeWire())
    assert not welcome.resumed


def test_durability_modes_persist_when_promised(store, clock):
    wt = make_node(store, clock, "a", durability="write-through")
    s, _ = wt.attach("wt", 0, Hello(None, 0), FakeWire())
    send(wt, s, 1, 1)
    assert orjson.loads(store.load("wt")[1])["state"]["count"] == 1
    ho = make_node(store, clock, "b", durability="handoff")
    s, _ = ho.attach("ho", 0, Hello(None, 0), FakeWire())
    send(ho, s, 1, 1)
    assert store.load("ho") is None  # nothing until a handoff or shutdown
    ho.flush_all()
    assert orjson.loads(store.load("ho")[1])["state"]["count"] == 1
    cp = make_node(store, clock, "c", durability="checkpoint", checkpoint_s=5.0)
    s, _ = cp.attach("cp", 0, Hello(None, 0), FakeWire())
    send(cp, s, 1, 1)
    clock.t += 1.0
    cp.sweep(clock())
    assert store.load("cp") is None  # the sweep runs every second, checkpoints every 5 s
    clock.t += 4.0
    cp.sweep(clock())
    assert orjson.loads(store.load("cp")[1])["state"]["count"] == 1
    send(cp, s, 2, 2)
    clock.t += 4.9
    cp.sweep(clock())
    assert orjson.loads(store.load("cp")[1])["state"]["count"] == 1
    clock.t += 0.1
    cp.sweep(clock())
    assert orjson.loads(store.load("cp")[1])["state"]["count"] == 2


def test_move_window_follows_reconnect_rate(store, clock):
    slow = make_node(store, clock, "s", reconnect_rate=100, moved_window_ms=5000)
    fast = make_node(store, clock, "f", reconnect_rate=10_000, moved_window_ms=5000)
    assert slow.moved_window_ms(200) == 2000  # 200 sessions at 100/s
    assert fast.moved_window_ms(200) == 100  # the floor: a few clients come back at once
    assert slow.moved_window_ms(10_000) == 5000  # the ceiling


def test_ownership_check(store, clock):
    node = make_node(store, clock, "n1")
    node.view = static_table(["n1", "n2"])
    mine = next(k for k in (f"k{i}" for i in range(100)) if node.view.route(k).node == "n1")
    theirs = next(k for k in (f"k{i}" for i in range(100)) if node.view.route(k).node == "n2")
    r = node.view.route(mine)
    assert node.check_owner(mine, r.slot, 0) == 0
    with pytest.raises(NotOwner):
        node.check_owner(theirs, node.view.route(theirs).slot, 0)
    with pytest.raises(NotOwner):
        node.check_owner(mine, (r.slot + 1) % 4096, 0)  # slot header lies
    assert node.check_owner(theirs, node.view.route(theirs).slot, 5) == 5  # newer table: trust


def test_idle_keys_are_flushed_and_dropped(store, clock):
    node = make_node(store, clock, key_idle_s=10, session_ttl_s=5)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    send(node, s, 1, 1)
    node.detach(s, w)
    clock.t += 11
    node.sweep(clock.t)
    assert "k" not in node.keys
    assert orjson.loads(store.load("k")[1])["state"]["count"] == 1
