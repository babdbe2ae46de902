"""An outsider on the gateway's host against a real gateway and counter backends run with
their defaults (only a control secret; the admin token generated): malformed session
envelopes, sizes around the documented limits, keys at and beyond their limits, many
sessions on one key, upgrades straight to a backend, admin calls without the token.
Each test names what docs/protocol.md, docs/gateway.md or docs/security.md promise."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from loadtest.topology import Proc, Topology, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

MiB = 1 << 20
HELLO = {"t": "hello", "sid": None, "last": 0, "ack": 0}


class DefaultTopology(Topology):
    """The gateway with its defaults: only addresses, a state dir and a control secret
    (no per-address limits lifted, no admin token given: it reads the generated one)."""

    def start_gateway(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gateway_port = self.gateway_port or free_port()
        self.admin_port = self.admin_port or free_port()
        state = self.workdir / "gateway"
        self.gateway = Proc(
            "gateway",
            [
                "-m",
                "gateway",
                "--listen",
                f"{self.host}:{self.gateway_port}",
                "--admin-listen",
                f"{self.host}:{self.admin_port}",
                "--state-dir",
                str(state),
            ],
            self.workdir / "gateway.log",
            env={"GATEWAY_CONTROL_SECRET": self.secret},
        )
        self.gateway.start()
        token = state / "admin.token"
        deadline = time.monotonic() + 10
        while not (token.exists() and token.read_text().strip()):
            assert time.monotonic() < deadline, "no generated admin token"
            time.sleep(0.05)
        self.admin_token = token.read_text().strip()


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    t = DefaultTopology(tmp_path_factory.mktemp("probes") / "topo", backends=2)
    asyncio.run(t.start())
    try:
        yield t
    finally:
        t.stop(10.0)


def url(t: Topology, key: str) -> str:
    return f"{t.url}?key={quote(key, safe='')}"


async def opened(t: Topology, key: str, **kw: Any) -> tuple[ClientConnection, dict[str, Any]]:
    hello = kw.pop("hello", HELLO)
    ws = await connect(url(t, key), open_timeout=5, compression=kw.pop("compression", None), **kw)
    await ws.send(json.dumps(hello))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))


async def outcome(ws: ClientConnection, wait: float = 3.0) -> tuple[str, Any]:
    """The next server message ("msg", d) or how the connection ended ("close", code)."""
    try:
        while True:
            m = json.loads(await asyncio.wait_for(ws.recv(), wait))
            if m["t"] == "msg":
                return "msg", m["d"]
    except ConnectionClosed as exc:
        return "close", exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        return "open", None


async def run(t: Topology, key: str, frames: list[Any], wait: float = 3.0) -> tuple[str, Any]:
    """Open a connection, send ``frames`` (objects are JSON-encoded), report the outcome."""
    ws = await connect(url(t, key), open_timeout=5, compression=None, max_size=None)
    try:
        for f in frames:
            await ws.send(f if isinstance(f, str | bytes) else json.dumps(f))
        return await outcome(ws, wait)
    finally:
        await ws.close()


def msg(seq: Any, ack: Any = 0, d: Any = None) -> dict[str, Any]:
    return {"t": "msg", "seq": seq, "ack": ack, "d": {"n": seq} if d is None else d}


# -------------------------------------------------------------------- envelopes

VIOLATIONS: dict[str, list[Any]] = {
    "a second hello": [HELLO, HELLO],
    "seq as a string": [HELLO, msg("1")],
    "seq 2^53 (above the maximum)": [HELLO, msg(2**53)],
    "seq 2^53-1 on a new session (a gap)": [HELLO, msg(2**53 - 1)],
    "seq 2 first (a gap)": [HELLO, msg(2)],
    "seq 0": [HELLO, msg(0)],
    "seq as a float": [HELLO, msg(1.0)],
    "seq as a bool": [HELLO, msg(True)],
    "seq with an exponent": [HELLO, '{"t":"msg","seq":1e0,"ack":0,"d":1}'],
    "seq NaN": [HELLO, '{"t":"msg","seq":NaN,"ack":0,"d":1}'],
    "a negative ack": [HELLO, {"t": "ack", "ack": -1}],
    "an ack beyond what was sent": [HELLO, {"t": "ack", "ack": 5}],
    "a msg acking beyond what was sent": [HELLO, msg(1, ack=7)],
    "an ack of 2^53": [HELLO, {"t": "ack", "ack": 2**53}],
    "a msg without d": [HELLO, {"t": "msg", "seq": 1, "ack": 0}],
    "an unknown t": [HELLO, {"t": "bogus"}],
    "a welcome from the client": [HELLO, {"t": "welcome", "sid": "x", "resumed": True, "last": 0}],
    "not JSON": [HELLO, "nope"],
    "a JSON array first": ["[1,2]"],
    "a msg before hello": [msg(1)],
    "hello.last as a string": [{"t": "hello", "sid": None, "last": "0"}],
    "hello.sid as a number": [{"t": "hello", "sid": 5, "last": 0}],
    "hello without last": [{"t": "hello", "sid": None}],
    "a 100 kB sid": [{"t": "hello", "sid": "a" * 100_000, "last": 0}],
    "JSON nested 1100 deep": [
        HELLO,
        '{"t":"msg","seq":1,"ack":0,"d":' + "[" * 1100 + "]" * 1100 + "}",
    ],
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_malformed_envelopes_close_4502(topo: Topology, name: str) -> None:
    """docs/protocol.md: malformed JSON, unknown t, out-of-range numbers, a first message
    that is not hello, a gap, an ack of a seq never sent, a second hello: 4502."""
    assert await run(topo, f"bad:{name}", VIOLATIONS[name]) == ("close", 4502)


async def test_what_the_server_tolerates(topo: Topology) -> None:
    # any JSON as d (the counter reads "n" from an object only)
    assert await run(topo, "ok:d5", [HELLO, msg(1, d=5)]) == ("msg", {"n": None, "count": 1})
    # binary frames holding the JSON
    frames = [json.dumps(HELLO).encode(), json.dumps(msg(1)).encode()]
    assert await run(topo, "ok:bin", frames) == ("msg", {"n": 1, "count": 1})
    # unknown fields are ignored; a new session's hello.last and ack are not checked
    hello = {**HELLO, "last": 5, "ack": 5, "x": 1}
    assert await run(topo, "ok:extra", [hello, msg(1)]) == ("msg", {"n": 1, "count": 1})
    # a resend (seq <= last) is dropped silently: one reply, then nothing
    ws, _ = await opened(topo, "ok:dup")
    try:
        await ws.send(json.dumps(msg(1)))
        await ws.send(json.dumps(msg(1)))
        assert await outcome(ws) == ("msg", {"n": 1, "count": 1})
        assert await outcome(ws, 0.5) == ("open", None)
    finally:
        await ws.close()
    # an ack below an earlier one is ignored (acks are cumulative)
    ws, _ = await opened(topo, "ok:regress")
    try:
        await ws.send(json.dumps(msg(1)))
        assert await outcome(ws) == ("msg", {"n": 1, "count": 1})
        await ws.send(json.dumps({"t": "ack", "ack": 1}))
        await ws.send(json.dumps({"t": "ack", "ack": 0}))
        await ws.send(json.dumps(msg(2, ack=0)))
        assert await outcome(ws) == ("msg", {"n": 2, "count": 2})
    finally:
        await ws.close()
    # nesting up to orjson's limit
    deep = '{"t":"msg","seq":1,"ack":0,"d":' + "[" * 1000 + "]" * 1000 + "}"
    assert await run(topo, "ok:deep", [HELLO, deep]) == ("msg", {"n": None, "count": 1})


# ------------------------------------------------------------------------ sizes


def sized(total: int) -> str:
    """A msg envelope of exactly ``total`` bytes."""
    base = json.dumps(msg(1, d={"n": 1, "p": ""}))
    m = json.dumps(msg(1, d={"n": 1, "p": "x" * (total - len(base))}))
    assert len(m) == total
    return m


@pytest.mark.parametrize("how", ["one frame", "fragmented", "compressed"])
async def test_message_size_limit_is_one_mib_inclusive(topo: Topology, how: str) -> None:
    """max_frame_bytes (gateway) and max_message (backend): 1 MiB passes, one byte more
    is closed with 1009, however the message is framed."""
    for total, want in [(MiB, ("msg", {"n": 1, "count": 1})), (MiB + 1, ("close", 1009))]:
        ws, _ = await opened(
            topo, f"size:{how}:{total}", compression="deflate" if how == "compressed" else None
        )
        try:
            m = sized(total)
            if how == "fragmented":
                await ws.send(iter([m[i : i + 60_000] for i in range(0, len(m), 60_000)]))
            else:
                await ws.send(m)
            assert await outcome(ws) == want, (how, total)
            if total > MiB:
                # closed by the gateway's frame check (no reason) or, once reassembled
                # or decompressed, by the backend's WebSocket library (its own text)
                reason = ws.close_reason or ""
                assert (reason == "") == (how == "one frame"), reason
        finally:
            await ws.close()


async def test_message_items_limit(topo: Topology) -> None:
    """max_message_items (65,536 JSON values): beyond it, 1009."""
    ok = json.dumps(msg(1, d=[0] * 60_000))
    big = json.dumps(msg(1, d=[0] * 70_000))
    assert await run(topo, "items:ok", [HELLO, ok]) == ("msg", {"n": None, "count": 1})
    assert await run(topo, "items:big", [HELLO, big]) == ("close", 1009)


async def test_invalid_utf8_in_a_text_frame_is_closed_1007(topo: Topology) -> None:
    """1007, with the WebSocket library's text as the reason (not a JSON hint)."""
    ws, _ = await opened(topo, "utf8")
    try:
        ws.protocol.send_text(b'{"t":"ack","ack":0,"x":"\xff"}')
        for data in ws.protocol.data_to_send():
            ws.transport.write(data)
        with pytest.raises(ConnectionClosed) as exc:
            await asyncio.wait_for(ws.recv(), 5)
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1007
        assert exc.value.rcvd.reason and not exc.value.rcvd.reason.startswith("{")
    finally:
        ws.transport.abort()


# ------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("k" * 256, True),
        ("é" * 256, True),  # 256 code points, 512 bytes
        ("🙂" * 256, True),  # 256 code points, 1 KiB
        (" ", True),
        ("k" * 257, False),
        ("é" * 257, False),
        ("a\nb", False),
        ("a\x00b", False),
        ("a\x7fb", False),
        ("a\u200db", False),  # ZERO WIDTH JOINER (format, not printable): emoji sequences
        ("a\u00a0b", False),  # NO-BREAK SPACE (a separator other than the space)
    ],
)
async def test_key_limits(topo: Topology, key: str, ok: bool) -> None:
    """docs/protocol.md: 1 to 256 printable characters (code points, str.isprintable)."""
    if ok:
        assert await run(topo, key, [HELLO, msg(1)]) == ("msg", {"n": 1, "count": 1})
    else:
        with pytest.raises(InvalidStatus) as exc:
            await connect(url(topo, key), open_timeout=5)
        assert exc.value.response.status_code == 400


async def raw_upgrade(t: Topology, target: bytes, extra: bytes = b"") -> tuple[int, Any]:
    """An upgrade with exactly these bytes; on 101, a hello and one counter message."""
    r, w = await asyncio.open_connection(t.host, t.gateway_port)
    try:
        key = base64.b64encode(os.urandom(16))
        w.write(
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
        )
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split()[1])
        if status != 101:
            return status, None
        for m in (HELLO, msg(1)):
            data = json.dumps(m).encode()
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            w.write(bytes([0x81, 0x80 | len(data)]) + mask + masked)
        replies = []
        while len(replies) < 2:
            _, n = await asyncio.wait_for(r.readexactly(2), 5)
            replies.append(json.loads(await r.readexactly(n)))
        return status, replies[1]["d"]
    finally:
        w.close()


async def test_raw_utf8_in_the_target_is_refused(topo: Topology) -> None:
    """A request target is ASCII (RFC 3986): raw UTF-8 gets 400; percent-encode it."""
    assert (await raw_upgrade(topo, b"/ws?key=caf\xc3\xa9"))[0] == 400
    assert await raw_upgrade(topo, b"/ws?key=caf%C3%A9") == (101, {"n": 1, "count": 1})


async def test_header_key_is_taken_as_is(topo: Topology) -> None:
    """X-Routing-Key is not percent-decoded; ?key= wins over it; the first ?key= wins."""
    h = b"X-Routing-Key: hdr%41\r\n"
    assert await raw_upgrade(topo, b"/ws", h) == (101, {"n": 1, "count": 1})
    assert await raw_upgrade(topo, b"/ws?key=hdr%2541") == (101, {"n": 1, "count": 2})
    assert await raw_upgrade(topo, b"/ws?key=q1", h) == (101, {"n": 1, "count": 1})
    assert await raw_upgrade(topo, b"/ws?key=q1&key=hdr%2541") == (101, {"n": 1, "count": 2})
    # a `%` without two hex digits is taken literally
    assert await raw_upgrade(topo, b"/ws?key=p%zz") == (101, {"n": 1, "count": 1})
    assert await raw_upgrade(topo, b"/ws?key=p%25zz") == (101, {"n": 1, "count": 2})


async def test_a_non_ascii_key_in_the_header_is_the_same_key(topo: Topology) -> None:
    assert await raw_upgrade(topo, b"/ws?key=caf%C3%A9h") == (101, {"n": 1, "count": 1})
    status, d = await raw_upgrade(topo, b"/ws", "X-Routing-Key: caféh\r\n".encode())
    assert status == 400 or d == {"n": 1, "count": 2}


# --------------------------------------------------------------------- sessions


async def test_many_sessions_on_one_key(topo: Topology) -> None:
    """Nothing bounds the sessions of one key but the per-address limits: 200 sessions,
    each message counted once (the counter's values are exactly 1..200)."""
    n = 200
    sem = asyncio.Semaphore(16)  # under max_pending_per_ip (32)
    conns: list[ClientConnection] = []

    async def one(i: int) -> int:
        async with sem:
            ws, _ = await opened(topo, "many")
        conns.append(ws)
        await ws.send(json.dumps(msg(1, d={"n": i})))
        kind, d = await outcome(ws, 10)
        assert kind == "msg"
        return int(d["count"])

    try:
        counts = await asyncio.gather(*(one(i) for i in range(n)))
        assert sorted(counts) == list(range(1, n + 1))
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))


async def test_unfinished_upgrades_from_one_address_get_429(topo: Topology) -> None:
    """max_pending_per_ip (32): more upgrades in progress from one address get 429 with
    Retry-After: 1."""
    socks = []
    try:
        for _ in range(40):
            r, w = await asyncio.open_connection(topo.host, topo.gateway_port)
            w.write(b"GET /ws?key=slow HTTP/1.1\r\n")  # never finished
            socks.append((r, w))
        await asyncio.sleep(0.2)
        with pytest.raises(InvalidStatus) as exc:
            await connect(url(topo, "slow"), open_timeout=5)
        assert exc.value.response.status_code == 429
        assert exc.value.response.headers["Retry-After"] == "1"
    finally:
        for _, w in socks:
            w.close()


async def test_a_refused_resume_does_not_leave_a_live_connection_on_a_dead_session(
    topo: Topology,
) -> None:
    key = "refused:live"
    a, w = await opened(topo, key)
    sid = w["sid"]
    await a.send(json.dumps(msg(1)))
    assert await outcome(a) == ("msg", {"n": 1, "count": 1})
    await a.send(json.dumps({"t": "ack", "ack": 1}))
    await asyncio.sleep(0.1)
    # someone resumes the sid with a `last` the server never sent: refused
    b, wb = await opened(topo, key, hello={"t": "hello", "sid": sid, "last": 9, "ack": 1})
    assert wb["resumed"] is False
    await b.close()
    # either the old connection is told its session is gone...
    told = await outcome(a, 1.0)
    if told == ("close", 4503):
        return
    # ...or its session is still resumable once that connection drops (rule 9)
    assert told == ("open", None)
    a.transport.abort()
    await asyncio.sleep(0.2)
    c, wc = await opened(topo, key, hello={"t": "hello", "sid": sid, "last": 1, "ack": 1})
    await c.close()
    assert wc["resumed"] is True, wc


# ------------------------------------------------------------------- other ports


async def test_a_backend_port_refuses_direct_upgrades(topo: Topology) -> None:
    """docs/security.md: a backend serves only what a gateway vouched for (403)."""
    port = topo.node_ports["node-1"]
    forged = {
        "X-Route-Key": "a",
        "X-Route-Slot": "1",
        "X-Route-Epoch": "1",
        "X-Route-Proof": "00" * 32,
    }
    for target, headers in [
        ("/ws?key=a", {}),
        ("/ws?key=a", {"X-Routing-Key": "a"}),
        ("/ws", forged),
    ]:
        with pytest.raises(InvalidStatus) as exc:
            await connect(f"ws://{topo.host}:{port}{target}", additional_headers=headers)
        assert exc.value.response.status_code == 403, (target, headers)
    async with aiohttp.ClientSession() as s:
        for path in ("/healthz", "/metrics"):  # open by design (counts only)
            async with s.get(f"http://{topo.host}:{port}{path}") as r:
                assert r.status == 200


ADMIN_CALLS = [
    ("GET", "/metrics"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/table?full=1"),
    ("GET", "/v1/connections"),
    ("GET", "/v1/status"),
    ("GET", "/v1/moves"),
    ("POST", "/v1/rebalancer/pause"),
    ("POST", "/v1/rebalancer/resume"),
    ("POST", "/v1/move"),
    ("POST", "/v1/nodes/node-1/drain"),
    ("POST", "/v1/drain"),
    ("POST", "/v1/undrain"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard?token=wrong"),
    ("GET", "/dashboard/events"),
    ("GET", "/dashboard/snapshot"),
    ("GET", "/nowhere"),
]


async def test_admin_calls_without_the_token_are_refused(topo: Topology) -> None:
    """docs/gateway.md: every call but /healthz and /readyz needs the token."""
    async with aiohttp.ClientSession() as s:
        for method, path in ADMIN_CALLS:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}]:
                body = {"key": "k", "to": "node-2", "exit": False} if method == "POST" else None
                async with s.request(
                    method, topo.admin_url + path, headers=headers, json=body
                ) as r:
                    assert r.status == 401, (method, path, headers)
        # the token only as a header (or once, for the dashboard, as ?token=)
        async with s.get(f"{topo.admin_url}/v1/status?token={topo.admin_token}") as r:
            assert r.status == 401
        for path in ("/healthz", "/readyz"):
            async with s.get(topo.admin_url + path) as r:
                assert r.status == 200
        async with s.get(f"{topo.admin_url}/v1/control") as r:
            assert r.status == 401
        # nothing happened: not draining, the rebalancer not paused, nothing moved
        st = await topo.admin_get(s, "/v1/status")
        assert st["draining"] is False and st["paused"] is False
        moves = (await topo.admin_get(s, "/v1/moves"))["moves"]
        assert not [m for m in moves if m.get("reason") in ("manual", "drain")], moves


async def test_the_auth_scheme_is_case_insensitive(topo: Topology) -> None:
    """RFC 7235 §2.1: `bearer` is `Bearer` (the data plane already reads it so)."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            topo.admin_url + "/v1/status", headers={"Authorization": f"bearer {topo.admin_token}"}
        ) as r,
    ):
        assert r.status == 200
