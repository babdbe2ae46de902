"""The node's core: sessions, resume, durability, and the serving rule under moves."""

import pytest

from backend.apps.chat import ChatApp
from backend.journal import current
from backend.node import NotOwner
from backend.store import StoreError
from clientlib.kernel.routing import SlotTable, slot_of, static_table
from clientlib.kernel.session_protocol import (
    CloseCode,
    CloseHint,
    Hello,
    Msg,
    ProtocolError,
    decode,
)
from tests.backend.conftest import FakeWire, controlled, make_node

pytestmark = pytest.mark.timeout(30)


def send(node, session, seq, n, ack=0):
    return node.receive(session, Msg(seq, ack, {"n": n}))


def replies(session):
    return [decode(f).data for f in session.outbox.frames(ack=0)]


def state_of(store, key):
    """The key as stored: its record, with write-through's journal replayed."""
    rec = store.load(key)
    return None if rec is None else current(rec.blob, rec.journal)


def table_with(owners: dict[int, str], default: str = "a", epoch: int = 1) -> SlotTable:
    t = SlotTable.empty()
    for s in range(t.num_slots):
        t.set_slot(s, owners.get(s, default), epoch)
    return t


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
    s2, welcome = node.attach("k", 0, Hello(s.sid, 1, 3), FakeWire())
    assert welcome.resumed and welcome.last == 3 and s2 is s
    assert [r["count"] for r in replies(s2)] == [2, 3]  # 1 was acked by hello.last


def test_client_close_1000_ends_the_session(store, clock):
    node = make_node(store, clock)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    node.end(s, w)
    _, welcome = node.attach("k", 0, Hello(s.sid, 0), FakeWire())
    assert not welcome.resumed


def test_resume_after_handoff_to_another_node(store, clock):
    """A move between two nodes: release (flush for the destination), the table commits,
    the source closes with 4000, the session resumes exactly on the destination."""
    old = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    new = controlled(make_node(store, clock, "b"), table_with({}, "a", 1))
    w = FakeWire()
    s, _ = old.attach("k", old.serving_epoch("k"), Hello(None, 0), w)
    for i in range(1, 6):
        send(old, s, i, i)
    flushed, error = old.release(2, [(("key", "k"), "b")])
    assert (flushed, error) == (1, "")
    assert not send(old, s, 6, 6)  # frozen: held by the connection, not processed, not acked
    assert s.inbox.last == 5
    moved = table_with({}, "a", 1)
    moved.set_override("k", "b", 2)
    old.set_view(moved)
    new.set_view(moved)
    assert w.closed is not None and w.closed[0] == CloseCode.MOVED
    assert CloseHint.decode(w.closed[1]).window_ms == 100  # one session: the shortest window
    s2, welcome = new.attach("k", new.serving_epoch("k"), Hello(s.sid, 2, 5), FakeWire())
    assert welcome.resumed and welcome.last == 5
    assert [r["count"] for r in replies(s2)] == [3, 4, 5]
    send(new, s2, 6, 6)
    assert replies(s2)[-1]["count"] == 6  # the counter continued exactly


def test_idle_key_of_a_released_unit_does_not_activate(store, clock):
    """Defect 1: a key not in memory when its slot is released must not be activated
    and served by the source (its acked messages would be dropped at commit)."""
    node = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    slot = slot_of("idle")
    node.release(2, [(("slot", slot), "b")])
    with pytest.raises(NotOwner):
        node.serving_epoch("idle")
    with pytest.raises(NotOwner):
        node.activate("idle", 1)  # even with an epoch checked before the release
    # another slot is unaffected
    other = next(k for k in (f"x{i}" for i in range(100)) if slot_of(k) != slot)
    assert node.serving_epoch(other) == 1


def test_aborted_move_resumes_held_messages_in_order(store, clock):
    """Defect 2: an abort gives the unit back at a newer epoch; the frozen session goes on
    (what it sent meanwhile is processed, no seq gap) and an ack reaches the client."""
    node = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    w = FakeWire()
    s, _ = node.attach("k", 1, Hello(None, 0), w)
    send(node, s, 1, 1)
    node.release(2, [(("slot", slot_of("k")), "b")])
    assert not send(node, s, 2, 2)  # held
    node.set_view(table_with({}, "a", 3))  # aborted: back to a at epoch 3
    assert w.closed is None
    assert node.can_process(s)
    send(node, s, 2, 2)
    send(node, s, 3, 3)
    assert [r["count"] for r in replies(s)] == [1, 2, 3]
    assert node.keys["k"].epoch == 3


def test_a_repeated_release_does_not_write_again(store, clock):
    """Found by the simulator (seed 1031, adversarial profile): a release order repeated
    after the source had written the key for the new owner wrote it again; had the new
    owner taken over (the commit reached the gateway before the repeat reached the source)
    and written since, its state was overwritten with the older one, at the same epoch."""
    a = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    s, _ = a.attach("k", 1, Hello(None, 0), FakeWire())
    send(a, s, 1, 1)
    assert a.release(2, [(("key", "k"), "b")]) == (1, "")
    committed = table_with({}, "a", 1)
    committed.set_override("k", "b", 2)
    b = controlled(make_node(store, clock, "b", durability="write-through"), committed)
    s2, _ = b.attach("k", b.serving_epoch("k"), Hello(s.sid, 1, 1), FakeWire())
    send(b, s2, 2, 2)  # written through by b at epoch 2
    assert a.release(2, [(("key", "k"), "b")]) == (1, "")  # the order again: nothing written
    assert state_of(store, "k")["state"]["count"] == 2


def test_a_release_the_table_has_moved_past_is_ignored(store, clock):
    """The same seed: a copy of a release order arrived after its move was aborted, froze
    the key the abort had just given back, and wrote it for the other node."""
    a = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    s, _ = a.attach("k", 1, Hello(None, 0), FakeWire())
    send(a, s, 1, 1)
    a.release(2, [(("slot", slot_of("k")), "b")])
    a.set_view(table_with({}, "a", 3))  # aborted: back to a at epoch 3
    send(a, s, 2, 2)
    assert a.release(2, [(("slot", slot_of("k")), "b")]) == (0, "")  # a late copy
    assert not a.keys["k"].frozen
    assert send(a, s, 3, 3)


def test_frozen_keys_end_with_the_lease(store, clock):
    """Defects 3 and 4: neither commit nor abort comes (the control plane is gone):
    when the lease runs out the node writes what it holds and stops serving."""
    node = controlled(make_node(store, clock, "a"), table_with({}, "a", 1), lease_s=3.0)
    w = FakeWire()
    s, _ = node.attach("k", 1, Hello(None, 0), w)
    send(node, s, 1, 1)
    node.release(2, [(("slot", slot_of("k")), "b")])
    clock.t += 3.1
    node.sweep(clock())
    assert w.closed is not None and w.closed[0] == CloseCode.SERVICE_RESTART
    assert "k" not in node.keys
    assert state_of(store, "k")["state"]["count"] == 1
    with pytest.raises(NotOwner):
        node.serving_epoch("other")


def test_no_lease_no_processing(store, clock):
    """Defect 6: a node that stalled past its lease processes and acks nothing more."""
    node = controlled(make_node(store, clock, "a"), table_with({}, "a", 1), lease_s=3.0)
    w = FakeWire()
    s, _ = node.attach("k", 1, Hello(None, 0), w)
    send(node, s, 1, 1)
    clock.t += 5  # stalled (SIGSTOP) past the lease, sockets alive
    assert not send(node, s, 2, 2)
    assert s.inbox.last == 1
    assert w.closed is not None and w.closed[0] == CloseCode.SERVICE_RESTART
    assert state_of(store, "k")["state"]["count"] == 1  # written before giving up


def test_no_lease_no_new_sessions_even_for_a_key_in_memory(store, clock):
    """Found by the simulator (seed 500, heavy faults, checkpoint): a node woke from a stall
    past its lease and took a hello that had waited in its socket before its tick noticed
    the lease was gone. The key was still in memory, and attaching to a key in memory
    skipped the serving rule: the session was resumed by a node whose key had already
    been given to another node at a newer epoch."""
    node = controlled(make_node(store, clock, "a"), table_with({}, "a", 1), lease_s=3.0)
    w = FakeWire()
    s, _ = node.attach("k", 1, Hello(None, 0), w)
    send(node, s, 1, 1)
    node.detach(s, w)
    clock.t += 5  # stalled past the lease; nothing has run since
    with pytest.raises(NotOwner):
        node.attach("k", 1, Hello(s.sid, 1, 1), FakeWire())


def test_a_hello_after_the_table_moved_on_is_refused(store, clock):
    """Found by the simulator (seed 30, heavy faults with control messages also lost and
    reordered): an upgrade checked at epoch 1 sent its hello late; meanwhile the key's slot
    was released to b (the key was not in memory, so nothing was written), then given to c
    (a newer epoch, so the release was forgotten). The hello activated the key at epoch 1
    from the store, which held nothing newer: two nodes served it."""
    node = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    epoch = node.serving_epoch("k")  # the upgrade's check
    slot = slot_of("k")
    node.release(2, [(("slot", slot), "b")])
    node.set_view(_moved(slot, "b", 2))
    node.set_view(_moved(slot, "c", 3))
    assert not node.released  # the table has moved past the release
    with pytest.raises(NotOwner):
        node.attach("k", epoch, Hello(None, 0), FakeWire())
    assert "k" not in node.keys


def _moved(slot: int, owner: str, epoch: int) -> SlotTable:
    t = table_with({}, "a", 1)
    t.set_slot(slot, owner, epoch)
    return t


def test_slot_move_leaves_overridden_keys_alone(store, clock):
    """Defect 5: a key with its own unit on this node is not part of its slot's move."""
    t = table_with({}, "a", 1)
    t.set_override("hot", "a", 2)
    node = controlled(make_node(store, clock, "a"), t)
    s, _ = node.attach("hot", node.serving_epoch("hot"), Hello(None, 0), FakeWire())
    send(node, s, 1, 1)
    node.release(3, [(("slot", slot_of("hot")), "b")])
    assert not node.keys["hot"].frozen
    assert node.serving_epoch("hot") == 2
    after = table_with({slot_of("hot"): "b"}, "a", 1)
    after.set_slot(slot_of("hot"), "b", 3)
    after.set_override("hot", "a", 2)
    node.set_view(after)
    assert "hot" in node.keys and send(node, s, 2, 2)


def test_a_key_taken_without_handoff_is_dropped(store, clock):
    node = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    w = FakeWire()
    s, _ = node.attach("k", 1, Hello(None, 0), w)
    send(node, s, 1, 1)
    node.set_view(table_with({}, "b", 5))  # presumed dead: everything went to b
    assert "k" not in node.keys
    assert w.closed is not None and w.closed[0] == CloseCode.NOT_OWNER


def test_stale_owner_is_fenced(store, clock):
    old = make_node(store, clock, "a", durability="write-through")
    new = make_node(store, clock, "b")
    w = FakeWire()
    s, _ = old.attach("k", 1, Hello(None, 0), w)
    send(old, s, 1, 1)
    new.attach("k", 3, Hello(None, 0), FakeWire())
    new.persist(new.keys["k"])  # the new owner wrote at epoch 3
    send(old, s, 2, 2)  # the old owner's write-through at epoch 1 is rejected
    assert old.stats["stale_writes"] == 1
    assert w.closed is not None and w.closed[0] == CloseCode.NOT_OWNER
    assert "k" not in old.keys
    with pytest.raises(NotOwner):
        old.activate("k", 1)
    with pytest.raises(NotOwner):
        old.activate("k", 3)  # the same epoch, another owner's record


def test_taking_a_key_fences_its_previous_owner_at_once(store, clock):
    """Found by the simulator (``loadtest simulate``, seed 4, default faults, checkpoint): a
    node that took a key from an owner presumed dead wrote nothing before its first
    checkpoint or handoff, so the old owner, waking from a stall past its lease, wrote what
    it held at its old epoch and the store took it. Taking a key now claims it first."""
    old = controlled(make_node(store, clock, "a"), table_with({}, "a", 1))
    w = FakeWire()
    s, _ = old.attach("k", 1, Hello(None, 0), w)
    send(old, s, 1, 1)
    new = controlled(make_node(store, clock, "b"), table_with({}, "b", 5))  # a presumed dead
    new.attach("k", new.serving_epoch("k"), Hello(None, 0), FakeWire())
    rec = store.load("k")
    assert rec is not None and (rec.epoch, rec.owner) == (5, "b")  # claimed before serving
    clock.t += 4  # a wakes past its lease and writes what it held: refused
    old.sweep(clock())
    assert old.stats["stale_writes"] == 1
    rec = store.load("k")
    assert rec is not None and (rec.epoch, rec.owner) == (5, "b")


class FailingStore:
    def __init__(self, inner):
        self.inner, self.fail = inner, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, *a):
        if self.fail:
            raise StoreError("disk full")
        return self.inner.save(*a)

    def append_journal(self, items):
        if self.fail:
            raise StoreError("disk full")
        return self.inner.append_journal(items)


def test_a_key_that_cannot_be_claimed_is_not_served(store, clock):
    flaky = FailingStore(store)
    node = controlled(make_node(flaky, clock, "a"), table_with({}, "a", 1))
    flaky.fail = True
    with pytest.raises(NotOwner):
        node.attach("k", 1, Hello(None, 0), FakeWire())
    assert "k" not in node.keys
    flaky.fail = False
    _, welcome = node.attach("k", 1, Hello(None, 0), FakeWire())
    assert welcome.last == 0


def test_write_through_store_error_loses_nothing_acked(store, clock):
    flaky = FailingStore(store)
    node = make_node(flaky, clock, durability="write-through")
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    send(node, s, 1, 1)
    flaky.fail = True
    send(node, s, 2, 2)  # applied in memory, not written: must not be acknowledged
    assert w.closed is not None and w.closed[0] == CloseCode.INTERNAL_ERROR
    assert "k" not in node.keys  # the change is forgotten with the key
    flaky.fail = False
    s2, welcome = node.attach("k", 0, Hello(s.sid, 1, 1), FakeWire())
    assert welcome.resumed and welcome.last == 1  # the client resends 2
    send(node, s2, 2, 2)
    assert replies(s2)[-1]["count"] == 2


def test_replay_overflow_ends_the_session_explicitly(store, clock):
    node = make_node(store, clock, replay_max_count=4)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    send(node, s, 1, 1)
    send(node, s, 2, 2)
    assert not node.can_process(s)  # half the replay buffer: input waits for acks
    for i in range(3, 6):  # a client that overruns its window anyway
        node.process(s, Msg(i, 0, {"n": i}))  # the 5th reply does not fit
    assert w.closed is not None and w.closed[0] == CloseCode.SEND_QUEUE_FULL
    assert node.stats["send_queue_full"] == 1
    _, welcome = node.attach("k", 0, Hello(s.sid, 0), FakeWire())
    assert not welcome.resumed


@pytest.mark.parametrize(
    "hello",
    [
        Hello("SID", 50, 0),  # the client saw more than the server kept
        Hello("SID", 0, 7),  # the server acknowledged 7, now has processed only 3
    ],
)
def test_resume_refused_when_state_was_lost(store, clock, hello):
    node = make_node(store, clock)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    for i in range(1, 4):
        send(node, s, i, i)
    node.detach(s, w)
    _, welcome = node.attach("k", 0, Hello(s.sid, hello.last, hello.ack), FakeWire())
    assert not welcome.resumed and welcome.last == 0


def test_broadcasts_reach_members_between_connections(store, clock):
    """Defect 9: a member reconnecting during a move gets what was broadcast meanwhile."""
    node = make_node(store, clock, app=ChatApp())
    wa, wb = FakeWire(), FakeWire()
    a, _ = node.attach("room", 0, Hello(None, 0), wa)
    b, _ = node.attach("room", 0, Hello(None, 0), wb)
    node.detach(b, wb)  # b is reconnecting
    node.receive(a, Msg(1, 0, {"text": "while you were away"}))
    texts = [m.get("text") for m in replies(b) if m.get("type") == "message"]
    assert texts == ["while you were away"]
    b2, welcome = node.attach("room", 0, Hello(b.sid, 1), FakeWire())
    assert welcome.resumed and b2 is b


@pytest.mark.parametrize("seen", [2, 3])
@pytest.mark.parametrize("handed_off", [False, True])
def test_a_restored_session_is_resumed_only_from_what_it_was_sent(store, clock, seen, handed_off):
    """Found by the simulator (seed 232, light faults, checkpoint, chat; and seed 539,
    heavy faults, checkpoint, chat, where the reloaded room was handed off before the
    member came back): a node that lost a room (a crash after its checkpoint) reloaded the
    checkpoint and broadcast to a member between connections, numbering the messages from
    the outbox's seq as loaded: the numbers the lost state had already used for other
    messages. The member's client had seen one of those; its hello's ``last`` fell inside
    the new outbox, so it was resumed and silently skipped a message. A session now
    carries the highest seq that may have reached a client, across nodes."""
    node = make_node(store, clock, "a", app=ChatApp(), durability="checkpoint")
    wa, wb = FakeWire(), FakeWire()
    a, _ = node.attach("room", 0, Hello(None, 0), wa)
    b, _ = node.attach("room", 0, Hello(None, 0), wb)
    node.receive(a, Msg(1, 0, {"text": "one"}))
    node.flush_all()  # the checkpoint: b's outbox ends at seq 2 ("one")
    node.receive(a, Msg(2, 0, {"text": "lost"}))  # b may see it as seq 3; then a crash
    restarted = make_node(store, clock, "a", app=ChatApp(), durability="checkpoint")
    c, _ = restarted.attach("room", 0, Hello(None, 0), FakeWire())
    restarted.receive(c, Msg(1, 0, {"text": "new"}))  # b's seq 3 is now "new"
    if handed_off:  # written and loaded again (by the next owner, or after an idle drop)
        restarted.flush_all()
        restarted = make_node(store, clock, "a", app=ChatApp(), durability="checkpoint")
    b2, welcome = restarted.attach("room", 0, Hello(b.sid, seen), FakeWire())
    assert welcome.resumed == (seen == 2)
    if welcome.resumed:
        assert [m.get("text") for m in replies(b2)][-1] == "new"


def test_durability_modes_persist_when_promised(store, clock):
    wt = make_node(store, clock, "a", durability="write-through")
    s, _ = wt.attach("wt", 0, Hello(None, 0), FakeWire())
    send(wt, s, 1, 1)
    assert state_of(store, "wt")["state"]["count"] == 1
    ho = make_node(store, clock, "b", durability="handoff")
    s, _ = ho.attach("ho", 0, Hello(None, 0), FakeWire())
    send(ho, s, 1, 1)
    assert store.load("ho") is None  # nothing until a handoff or shutdown
    ho.flush_all()
    assert state_of(store, "ho")["state"]["count"] == 1
    cp = make_node(store, clock, "c", durability="checkpoint", checkpoint_s=5.0)
    s, _ = cp.attach("cp", 0, Hello(None, 0), FakeWire())
    send(cp, s, 1, 1)
    clock.t += 1.0
    cp.sweep(clock())
    assert store.load("cp") is None  # the sweep runs every second, checkpoints every 5 s
    clock.t += 4.0
    cp.sweep(clock())
    assert state_of(store, "cp")["state"]["count"] == 1
    send(cp, s, 2, 2)
    clock.t += 4.9
    cp.sweep(clock())
    assert state_of(store, "cp")["state"]["count"] == 1
    clock.t += 0.1
    cp.sweep(clock())
    assert state_of(store, "cp")["state"]["count"] == 2


def test_move_window_follows_reconnect_rate(store, clock):
    slow = make_node(store, clock, "s", reconnect_rate=100, moved_window_ms=5000)
    fast = make_node(store, clock, "f", reconnect_rate=10_000, moved_window_ms=5000)
    assert slow.moved_window_ms(200) == 2000  # 200 sessions at 100/s
    assert fast.moved_window_ms(200) == 100  # the floor: a few clients come back at once
    assert slow.moved_window_ms(10_000) == 5000  # the ceiling


def test_ownership_check(store, clock):
    node = controlled(make_node(store, clock, "n1"), static_table(["n1", "n2"]))
    mine = next(k for k in (f"k{i}" for i in range(100)) if node.view.route(k).node == "n1")
    theirs = next(k for k in (f"k{i}" for i in range(100)) if node.view.route(k).node == "n2")
    assert node.serving_epoch(mine) == 0
    with pytest.raises(NotOwner):
        node.serving_epoch(theirs)
    # a gateway's signed claim at a newer epoch than our table: the table is behind
    assert node.serving_epoch(theirs, claimed=5) == 5


def test_idle_keys_are_flushed_and_dropped(store, clock):
    node = make_node(store, clock, key_idle_s=10, session_ttl_s=5)
    w = FakeWire()
    s, _ = node.attach("k", 0, Hello(None, 0), w)
    send(node, s, 1, 1)
    node.detach(s, w)
    clock.t += 11
    node.sweep(clock.t)
    assert "k" not in node.keys
    assert state_of(store, "k")["state"]["count"] == 1
