"""The control-plane codec: round trips, and refusal of anything malformed at the door."""

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import SlotTable
from clientlib.kernel.session_protocol import ProtocolError

pytestmark = pytest.mark.timeout(60)

printable = st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs",))
keys = st.text(printable, min_size=1, max_size=40).filter(str.isprintable)
node_ids = st.text(printable, min_size=1, max_size=20).filter(str.isprintable)
rates = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
counts = st.integers(0, 2**31)
units = st.one_of(
    st.tuples(st.just("slot"), st.integers(0, 4095)),
    st.tuples(st.just("key"), keys),
)
reports = st.builds(
    cp.LoadReport,
    rate=rates,
    capacity=st.floats(0.001, 1e6),
    score=rates,
    pressure=st.booleans(),
    sessions=counts,
    keys=counts,
    slots=st.dictionaries(st.integers(0, 4095), rates, max_size=8),
    hot_keys=st.lists(st.tuples(keys, st.integers(0, 4095), rates), max_size=5).map(tuple),
    handler_us=rates,
    loop_lag_ms=rates,
    busy=st.floats(0, 1),
)
tables = st.integers(1, 8).flatmap(
    lambda n: st.builds(
        SlotTable,
        st.lists(st.none() | node_ids, min_size=n, max_size=n),
        st.lists(st.integers(0, 2**40), min_size=n, max_size=n),
        st.dictionaries(keys, st.tuples(node_ids, st.integers(0, 2**40)), max_size=3),
        st.integers(0, 2**31),
    )
)
messages = st.one_of(
    st.builds(
        cp.Register,
        node_ids,
        st.text("0123456789abcdef", min_size=1, max_size=16),
        st.tuples(st.sampled_from(["127.0.0.1", "node.example", "::1"]), st.integers(1, 65535)),
        st.floats(0.001, 1e6),
        st.dictionaries(keys, st.integers(0, 2**40), max_size=4),
        st.integers(0, 2**40),
    ),
    st.builds(cp.Report, counts, reports, counts),
    st.builds(cp.Released, counts, counts, st.text(max_size=50)),
    st.builds(cp.Leave, node_ids),
    st.builds(cp.Granted, counts, st.integers(1, 10**6)),
    st.builds(cp.TableUpdate, tables),
    st.builds(
        cp.Release, counts, counts, st.lists(st.tuples(units, node_ids), max_size=5).map(tuple)
    ),
    st.just(cp.Left()),
    st.builds(cp.Refused, st.text(max_size=50)),
    st.builds(cp.ControlError, st.text(max_size=50)),
)


def _rounded(msg: cp.ControlMessage) -> cp.ControlMessage:
    """Reports travel rounded (2-4 decimals); compare what the wire can carry."""
    if isinstance(msg, cp.Report):
        wire = cp.LoadReport.from_json(orjson.loads(orjson.dumps(msg.load.to_json())))
        return cp.Report(msg.seq, wire, msg.table_version)
    return msg


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(msg):
    assert cp.decode(cp.encode(msg)) == _rounded(msg)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_message_or_protocol_error(raw):
    with contextlib.suppress(ProtocolError):
        cp.decode(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(
        [
            "register",
            "report",
            "released",
            "leave",
            "granted",
            "table",
            "release",
            "left",
            "refused",
            "error",
        ]
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "node",
                "incarnation",
                "addr",
                "capacity",
                "keys",
                "max_epoch",
                "seq",
                "load",
                "move",
                "flushed",
                "error",
                "targets",
                "epoch",
                "lease_ms",
            ]
        ),
        json_values,
    ),
)
def test_any_json_of_a_known_type_gives_a_message_or_protocol_error(t, fields):
    with contextlib.suppress(ProtocolError):
        cp.decode(orjson.dumps({"t": t, **fields}))


@pytest.mark.parametrize(
    "raw,why",
    [
        (b'{"t":"report","seq":1,"load":{"rate":0.0}}', "capacity"),
        (b'{"t":"report","seq":1,"load":{"rate":-1,"capacity":5}}', "rate"),
        (b'{"t":"report","seq":1,"load":{"rate":1e999,"capacity":5}}', "JSON"),
        (b'{"t":"report","seq":1,"load":{"rate":1,"capacity":5,"slots":{"x":1}}}', "slot"),
        (b'{"t":"report","seq":1,"load":{"rate":1,"capacity":5,"hot_keys":[["k",1]]}}', "hot_keys"),
        (b'{"t":"report","seq":1,"load":{"rate":1,"capacity":5,"pressure":"yes"}}', "pressure"),
        (b'{"t":"report","seq":1,"load":[]}', "object"),
        (b'{"t":"report","load":{"rate":1,"capacity":5}}', "seq"),
        (b'{"t":"register","node":"n","incarnation":"i","addr":"nowhere","capacity":1}', "addr"),
        (b'{"t":"register","node":"n","incarnation":"i","addr":"h:1","capacity":-5}', "capacity"),
        (b'{"t":"register","node":"","incarnation":"i","addr":"h:1","capacity":1}', "node"),
        (b'{"t":"register","node":"n","addr":"h:1","capacity":1}', "incarnation"),
        (
            b'{"t":"register","node":"n","incarnation":"i","addr":"h:1","capacity":1,'
            b'"keys":{"k":"1"}}',
            "epoch",
        ),
        (b'{"t":"released","move":"7"}', "move"),
        (b'{"t":"released","move":true}', "move"),
        (b'{"t":"released","move":1,"error":5}', "error"),
        (b'{"t":"granted","seq":1,"lease_ms":0}', "lease_ms"),
        (b'{"t":"release","move":1,"targets":[["node",1,"n"]],"epoch":2}', "kind"),
        (b'{"t":"release","move":1,"targets":[["slot",-1,"n"]],"epoch":2}', "slot"),
        (b'{"t":"release","move":1,"targets":[["key","","n"]],"epoch":2}', "key"),
        (b'{"t":"release","move":1,"targets":[["key","k",""]],"epoch":2}', "node"),
        (b'{"t":"release","move":1,"targets":"all","epoch":2}', "list"),
        (b'{"t":"table","table":{"owners":["a"],"epochs":[]}}', "length"),
        (b'{"t":"table","table":{"owners":[1],"epochs":[1]}}', "owners"),
        (b'{"t":"bogus"}', "unknown"),
        (b'{"t":7}', "unknown"),
        (b"[]", "object"),
        (b"not json", "JSON"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(raw, why):
    with pytest.raises(ProtocolError, match=why):
        cp.decode(raw)


def test_a_report_is_typed_once():
    msg = cp.decode(
        b'{"t":"report","seq":3,"load":{"rate":12.5,"capacity":100,"slots":{"7":12.5},'
        b'"hot_keys":[["room:1",7,12.5]],"pressure":true}}'
    )
    assert isinstance(msg, cp.Report)
    assert msg.load.slots == {7: 12.5} and msg.load.hot_keys == (("room:1", 7, 12.5),)
    assert msg.load.util == 0.125 and msg.load.pressure
