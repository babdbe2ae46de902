import contextlib
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clientlib.kernel.session_protocol import (
    CLOSE_ACTIONS,
    MAX_SEQ,
    Ack,
    Action,
    CloseCode,
    CloseHint,
    Hello,
    Msg,
    ProtocolError,
    Welcome,
    close_action,
    decode,
    encode,
    encode_msg_raw,
)

DOC = Path(__file__).parents[3] / "docs" / "protocol.md"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
seqs = st.integers(0, MAX_SEQ)
sids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64)


@given(
    st.one_of(
        st.builds(Hello, st.none() | sids, seqs, seqs),
        st.builds(Welcome, sids, st.booleans(), seqs),
        st.builds(Msg, st.integers(1, MAX_SEQ), seqs, json_values),
        st.builds(Ack, seqs),
    )
)
def test_round_trip(env):
    assert decode(encode(env)) == env


@given(st.integers(1, MAX_SEQ), seqs, json_values)
def test_raw_msg_matches_encoder(seq, ack, data):
    assert decode(encode_msg_raw(seq, ack, orjson.dumps(data))) == Msg(seq, ack, data)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"hello"',
        b"{}",
        b'{"t":"nope"}',
        b'{"t":"msg","seq":0,"ack":0,"d":1}',  # seq starts at 1
        b'{"t":"msg","seq":1,"ack":-1,"d":1}',
        b'{"t":"msg","seq":1,"ack":0}',  # no d
        b'{"t":"msg","seq":9007199254740992,"ack":0,"d":1}',  # beyond 2**53-1
        b'{"t":"msg","seq":true,"ack":0,"d":1}',
        b'{"t":"msg","seq":1.5,"ack":0,"d":1}',
        b'{"t":"hello","sid":"","last":0}',
        b'{"t":"hello","sid":"a\\u0000b","last":0}',
        b'{"t":"hello","sid":7,"last":0}',
        b'{"t":"welcome","sid":"x","resumed":"yes","last":0}',
        b'{"t":"welcome","sid":null,"resumed":true,"last":0}',
        b'{"t":"ack"}',
    ],
)
def test_rejects(raw):
    with pytest.raises(ProtocolError):
        decode(raw)


@given(st.binary(max_size=200))
def test_decoder_raises_only_protocol_error_on_bytes(raw):
    with contextlib.suppress(ProtocolError):
        decode(raw)


@given(
    st.dictionaries(
        st.sampled_from(["t", "seq", "ack", "d", "sid", "last", "resumed"]),
        json_values | st.sampled_from(["msg", "ack", "hello", "welcome"]),
    )
)
def test_decoder_raises_only_protocol_error_on_objects(obj):
    with contextlib.suppress(ProtocolError):
        decode(orjson.dumps(obj))


def test_close_action_ranges():
    assert close_action(None) is Action.RECONNECT
    assert close_action(4000) is Action.RECONNECT_WINDOW
    assert close_action(4123) is Action.RECONNECT  # unknown, reconnect range
    assert close_action(4777) is Action.STOP  # unknown, stop range
    assert close_action(1013) is Action.RETRY_AFTER
    assert close_action(1000) is Action.STOP


def test_every_code_has_an_action():
    assert set(CLOSE_ACTIONS) == set(CloseCode)


def test_close_code_table_matches_docs():
    text = DOC.read_text()
    section = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for m in re.finditer(r"^\|\s*(\d{4})\s*\|\s*`?(\w+)`?\s*\|\s*(\w+)\s*\|", section, re.M):
        documented[int(m.group(1))] = (m.group(2), m.group(3))
    in_code = {int(c): (c.name, CLOSE_ACTIONS[c].value) for c in CloseCode}
    assert documented == in_code


@given(st.integers(1, 3_600_000) | st.none(), st.integers(1, 3_600_000) | st.none())
def test_hint_round_trip(after, window):
    h = CloseHint(after, window)
    assert CloseHint.decode(h.encode()) == h
    assert len(h.encode().encode()) <= 123


@pytest.mark.parametrize(
    "reason",
    ["", "bye", "{", "[1]", '{"after_ms": -5}', '{"after_ms": 99999999999}', '{"window_ms": "1"}'],
)
def test_hint_garbage_is_empty(reason):
    assert CloseHint.decode(reason) == CloseHint()
