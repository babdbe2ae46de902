"""The etcd client's values and failover, without etcd: a scripted transport."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clientlib.kernel.etcd import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    LineSplitter,
    Put,
    parse_endpoints,
    parse_watch,
    prefix_end,
)
from clientlib.kernel.etcd_layout import Layout

pytestmark = pytest.mark.timeout(20)


class Scripted:
    """Answers by endpoint: a list of (status, body) or an exception, consumed in order."""

    def __init__(self, script: dict[str, list[object]]):
        self.script = script
        self.calls: list[tuple[str, str]] = []

    async def call(self, endpoint, path, body, timeout, headers):
        self.calls.append((endpoint, path))
        answer = self.script[endpoint].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def stream(self, endpoint, path, body, headers):
        for chunk in self.script[endpoint]:
            yield chunk


def test_endpoints_are_parsed_and_checked():
    assert parse_endpoints("10.0.0.1:2379, http://h:2380") == ["10.0.0.1:2379", "h:2380"]
    for bad in ("", "h", "h:x", ":1", "h:70000"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_prefix_end_covers_the_prefix():
    assert prefix_end("/a/") == "/a0"
    assert prefix_end("/a/") > "/a/zzz" and prefix_end("/a/") <= "/a0"


def test_compare_and_put_speak_the_gateway_json():
    c = Compare("/k", "CREATE", 0).to_json()
    assert c == {"key": "L2s=", "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    v = Compare("/k", "VALUE", b"x", "NOT_EQUAL").to_json()
    assert v["value"] == "eA==" and v["result"] == "NOT_EQUAL"
    assert Put("/k", b"v", 7).to_json() == {
        "request_put": {"key": "L2s=", "value": "dg==", "lease": "7"}
    }


def test_watch_messages_decode_puts_deletes_and_compaction():
    line = orjson.dumps(
        {
            "result": {
                "header": {"revision": "9"},
                "events": [
                    {"kv": {"key": "L2E=", "value": "eA==", "mod_revision": "9"}},
                    {"type": "DELETE", "kv": {"key": "L2I=", "mod_revision": "9"}},
                ],
            }
        }
    )
    b = parse_watch(line)
    assert b.revision == 9 and [e.kind for e in b.events] == ["put", "delete"]
    assert b.events[0].kv.key == "/a" and b.events[0].kv.value == b"x"
    assert parse_watch(b'{"result":{"compact_revision":"5"}}').compacted == 5
    with pytest.raises(EtcdUnavailable):
        parse_watch(b'{"error":{"message":"no leader"}}')


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20), st.data()
)
def test_line_splitter_cuts_anywhere(lines, data):
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    s, out, last = LineSplitter(), [], 0
    for c in [*cuts, len(stream)]:
        out += s.feed(stream[last:c])
        last = c
    assert out == [line.strip() for line in lines if line.strip()]


def test_line_splitter_is_bounded():
    s = LineSplitter(max_message=100)
    with pytest.raises(EtcdError):
        s.feed(b"x" * 101)


def test_calls_fail_over_to_the_next_member():
    t = Scripted(
        {
            "a:1": [EtcdUnavailable("refused")],
            "b:2": [(503, b'{"message":"etcdserver: no leader"}'), (200, b"{}")],
            "c:3": [(200, b'{"header":{"revision":"4"}}')],
        }
    )
    c = EtcdClient(t, ["a:1", "b:2", "c:3"], timeout=5)
    assert asyncio.run(c.put("/k", b"v")) == 4
    assert [e for e, _ in t.calls] == ["a:1", "b:2", "c:3"] and c.endpoint == "c:3"


def test_a_refusal_is_not_retried():
    t = Scripted({"a:1": [(400, b'{"message":"requested lease not found"}')]})
    with pytest.raises(EtcdError, match="lease not found"):
        asyncio.run(EtcdClient(t, ["a:1"]).keepalive(1))
    assert len(t.calls) == 1


def test_no_member_answers_in_time():
    clock = [0.0]

    class Down:
        async def call(self, endpoint, path, body, timeout, headers):
            clock[0] += timeout
            raise EtcdUnavailable("timed out")

        def stream(self, endpoint, path, body, headers):
            raise NotImplementedError

    c = EtcdClient(Down(), ["a:1", "b:2"], timeout=3, clock=lambda: clock[0])
    with pytest.raises(EtcdUnavailable):
        asyncio.run(c.get("/k"))
    assert clock[0] >= 3


def test_layout_names_and_parses_keys():
    lay = Layout("/c1")
    assert lay.parse(lay.node("n1")) == ("nodes", "n1", "")
    assert lay.parse(lay.released("n1", 7)) == ("answers", "n1", "released-7")
    assert lay.parse(lay.release("n1", 7)) == ("orders", "n1", "release-7")
    assert lay.parse(lay.leader) == ("leader", "", "")
    assert lay.parse("/c1/nodes/") == ("", "", "")
    assert lay.parse("/other/nodes/n1") == ("", "", "")
    with pytest.raises(ValueError):
        Layout("c1/")
