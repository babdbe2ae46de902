import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.frames import FrameTracker, close_frame


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


frames_st = st.lists(
    st.tuples(
        st.sampled_from([0x1, 0x2, 0x9, 0xA]),
        st.sampled_from([0, 1, 125, 126, 127, 300, 65535, 65536, 70000]),
    ),
    min_size=1,
    max_size=12,
)


@given(
    frames_st,
    st.booleans(),
    st.lists(st.integers(1, 100_000), max_size=20),
    st.integers(1000, 4999),
)
def test_tracks_frames_across_any_cut(specs, masked, cuts, code):
    stream = b""
    for opcode, n in specs:
        if opcode & 0x8:
            n = min(n, 125)
        stream += frame(opcode, b"\x00" * n, mask=os.urandom(4) if masked else None)
    stream += frame(0x8, struct.pack("!H", code) + b"bye", mask=os.urandom(4) if masked else None)
    t = FrameTracker(masked=masked, max_frame=1 << 20)
    pos = 0
    for c in sorted(set(cuts)):
        if c >= len(stream):
            break
        assert t.feed(stream[pos:c]) == 0
        pos = c
    assert t.feed(stream[pos:]) == 0
    assert t.frames == len(specs) + 1
    assert t.bytes == len(stream)
    assert t.close_seen and t.close_code == code
    assert t.at_boundary


@given(
    st.integers(0, 15),
    st.booleans(),
    st.booleans(),
    st.sampled_from([0, 1, 2, 64, 125, 126, 127, 300, 1024, 1025, 65535, 65536]),
)
def test_one_whole_frame_per_chunk_reads_as_the_same_frame_cut_in_two(opcode, fin, masked, n):
    """The fast path (a chunk that is exactly one frame) agrees with the general one."""
    data = frame(opcode, b"\x00" * n, fin=fin, mask=b"abcd" if masked else None)
    whole = FrameTracker(masked=True, max_frame=1024, control_rate=1, control_burst=1)
    cut = FrameTracker(masked=True, max_frame=1024, control_rate=1, control_burst=1)
    code = whole.feed(data)
    code_cut = cut.feed(data[:1]) or cut.feed(data[1:])
    assert code == code_cut
    if not code:
        assert (whole.frames, whole.bytes, whole.at_boundary) == (cut.frames, cut.bytes, True)
        assert (whole.close_seen, whole.ctl_budget) == (cut.close_seen, cut.ctl_budget)


def test_byte_by_byte_header():
    data = frame(0x2, b"x" * 70000, mask=b"abcd")
    t = FrameTracker(masked=True)
    for i in range(20):
        assert t.feed(data[i : i + 1]) == 0
        assert not t.at_boundary
    assert t.feed(data[20:]) == 0
    assert t.at_boundary and t.frames == 1


@pytest.mark.parametrize(
    "data,masked,code",
    [
        (frame(0x2, b"x", mask=None), True, 1002),  # unmasked client frame
        (frame(0x2, b"x", mask=b"abcd"), False, 1002),  # masked server frame
        (frame(0x3, b"x", mask=b"abcd"), True, 1002),  # reserved opcode
        (frame(0xB, b"x", mask=b"abcd"), True, 1002),  # reserved control opcode
        (frame(0x9, b"x", fin=False, mask=b"abcd"), True, 1002),  # fragmented control frame
        (frame(0x9, b"x" * 126, mask=b"abcd"), True, 1002),  # control frame > 125
        (frame(0x2, b"x" * 2000, mask=b"abcd"), True, 1009),  # above max_frame
    ],
)
def test_violations(data, masked, code):
    assert FrameTracker(masked=masked, max_frame=1024).feed(data) == code


def test_close_frame_encoding():
    t = FrameTracker(masked=True)
    assert t.feed(close_frame(4000, '{"window_ms":100}', mask=b"wxyz")) == 0
    assert t.close_code == 4000
    t2 = FrameTracker(masked=False)
    assert t2.feed(close_frame(1001)) == 0 and t2.close_code == 1001


def test_close_without_code():
    t = FrameTracker(masked=False)
    assert t.feed(frame(0x8, b"")) == 0
    assert t.close_seen and t.close_code is None


def test_control_frame_budget_burst_then_rate():
    """Pings and pongs cost one unit each; refill adds control_rate per second up to the
    burst; the frame that finds the budget empty gets 1008. Time is injected."""
    ping = frame(0x9, b"p", mask=b"abcd")
    pong = frame(0xA, b"", mask=b"abcd")
    t = FrameTracker(masked=True, control_rate=10, control_burst=20)
    t.refill(100.0)
    assert t.feed((ping + pong) * 10) == 0  # the burst
    assert t.feed(ping) == 1008
    t = FrameTracker(masked=True, control_rate=10, control_burst=20)
    t.refill(100.0)
    assert t.feed(ping * 20) == 0
    t.refill(100.5)  # half a second: 5 more
    assert t.feed(ping * 5) == 0
    assert t.feed(ping) == 1008
    t = FrameTracker(masked=True, control_rate=10, control_burst=20)
    t.refill(100.0)
    t.refill(1000.0)  # a long quiet spell earns no more than the burst
    assert t.feed(ping * 20) == 0
    assert t.feed(ping) == 1008


def test_data_and_close_frames_cost_nothing_and_no_budget_means_no_limit():
    t = FrameTracker(masked=True, control_rate=1, control_burst=1)
    data = frame(0x2, b"x" * 10, mask=b"abcd")
    assert t.feed(data * 1000) == 0
    assert t.feed(frame(0x8, struct.pack("!H", 1000), mask=b"abcd")) == 0
    unlimited = FrameTracker(masked=False)
    assert unlimited.feed(frame(0x9, b"") * 100_000) == 0
