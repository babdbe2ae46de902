import pytest
from hypothesis import given
from hypothesis import strategies as st

from clientlib.kernel.replay import Inbox, Outbox, OutboxFull
from clientlib.kernel.session_protocol import Msg, ProtocolError, decode


def test_outbox_numbers_and_releases():
    box = Outbox(max_count=10)
    seqs = [box.push(b'"m%d"' % i) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert box.ack(3) == 3
    assert [decode(f).seq for f in box.frames(ack=0)] == [4, 5]
    assert box.ack(2) == 0  # an older ack is harmless
    with pytest.raises(ProtocolError):
        box.ack(6)  # never sent


def test_outbox_bounds():
    box = Outbox(max_count=2, max_bytes=100)
    box.push(b"1")
    box.push(b"2")
    with pytest.raises(OutboxFull):
        box.push(b"3")
    box.ack(1)
    box.push(b"3")
    big = Outbox(max_count=100, max_bytes=10)
    with pytest.raises(OutboxFull):
        big.push(b"x" * 11)


def test_outbox_state_round_trip():
    box = Outbox()
    for i in range(4):
        box.push(b'{"i":%d}' % i)
    box.ack(2)
    again = Outbox.from_state(box.to_state(), max_count=10, max_bytes=1000)
    assert again.frames(ack=7) == box.frames(ack=7)
    assert again.next_seq == 5 and again.acked == 2


def test_frames_after():
    box = Outbox()
    for i in range(5):
        box.push(b"%d" % i)
    assert [decode(f).seq for f in box.frames_after(3, ack=0)] == [4, 5]


@given(st.lists(st.integers(1, 30), max_size=100))
def test_inbox_delivers_each_seq_once_in_order(arrivals):
    """Any resend pattern (replays from an earlier point) delivers 1..n exactly once."""
    inbox = Inbox()
    delivered = []
    for upto in arrivals:  # a resend of everything from last acked to `upto`
        for seq in range(max(1, inbox.last - 3), upto + 1):
            if seq > inbox.last + 1:
                break
            if inbox.accept(seq):
                delivered.append(seq)
    assert delivered == list(range(1, inbox.last + 1))


def test_inbox_gap_is_a_violation():
    inbox = Inbox()
    assert inbox.accept(1)
    with pytest.raises(ProtocolError):
        inbox.accept(3)


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(0, 2**16))
def test_exactly_once_through_random_disconnects(drops, seed):
    """Sender outbox + receiver inbox over a link that drops everything in flight at random
    points: after the resends, the receiver holds every message exactly once, in order."""
    import random

    rng = random.Random(seed)
    out, inbox = Outbox(max_count=1000), Inbox()
    received = []
    n = 0
    for drop in drops:
        for _ in range(rng.randint(0, 5)):
            n += 1
            out.push(b"%d" % n)
        # a reconnect: the receiver says what it has, the sender resends the rest
        out.ack(inbox.last)
        frames = out.frames(ack=0)
        cut = rng.randint(0, len(frames)) if drop else len(frames)
        for f in frames[:cut]:
            m = decode(f)
            assert isinstance(m, Msg)
            if inbox.accept(m.seq):
                received.append(m.data)
    out.ack(inbox.last)
    for f in out.frames(ack=0):
        m = decode(f)
        assert isinstance(m, Msg)
        if inbox.accept(m.seq):
            received.append(m.data)
    assert received == list(range(1, n + 1))


def test_texts_after_returns_only_the_newest():
    box = Outbox(max_count=10)
    for i in range(1, 6):
        box.push(b'{"i":%d}' % i)
    box.ack(2)
    assert box.texts_after(3) == ['{"i":4}', '{"i":5}']
    assert box.texts_after(0) == ['{"i":3}', '{"i":4}', '{"i":5}']  # acked ones are gone
    assert box.texts_after(5) == []
