"""The relay over real sockets on loopback (gateway, backends and clients in one loop)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clientlib import Client, Unauthorized
from clientlib.kernel.routing import Route
from clientlib.kernel.session_protocol import CloseCode, CloseHint
from gateway.auth import make_token
from gateway.config import GatewayConfig
from gateway.route_source import StaticDirectory
from gateway.server import Gateway
from tests.gateway.gwproc import make_cert

pytestmark = pytest.mark.timeout(30)


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for m in ws:
            await ws.send(m)


async def flood(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send(b"x" * 65536)


@contextlib.asynccontextmanager
async def plain_server(handler: Any = echo, **kw: Any):
    async with serve(handler, "127.0.0.1", 0, **kw) as srv:
        yield f"127.0.0.1:{next(iter(srv.sockets)).getsockname()[1]}"


@contextlib.asynccontextmanager
async def gateway(backends: list[str], directory: Any = None, **kw: Any):
    cfg = GatewayConfig(
        listen="127.0.0.1:0", static_backend=backends if directory is None else [], **kw
    )
    gw = Gateway(cfg, directory or StaticDirectory(backends))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


def url(gw: Gateway, key: str = "room:1") -> str:
    return f"ws://127.0.0.1:{gw.port}/ws?key={key}"


async def test_relays_plain_websocket_both_ways():
    async with plain_server() as b1, plain_server() as b2, gateway([b1, b2]) as gw:
        async with connect(url(gw)) as ws:
            for size in (0, 10, 200, 70000):
                await ws.send(b"a" * size)
                assert await ws.recv() == b"a" * size
            await ws.send("text ✓")
            assert await ws.recv() == "text ✓"
        await asyncio.sleep(0.05)
        assert gw.metrics.upgraded._value.get() == 1


async def test_same_key_same_backend():
    seen: list[str] = []

    def handler_for(name: str):
        async def h(ws: ServerConnection) -> None:
            seen.append(name)
            await ws.close()

        return h

    async with (
        plain_server(handler_for("a")) as b1,
        plain_server(handler_for("b")) as b2,
        gateway([b1, b2]) as gw,
    ):
        for _ in range(5):
            async with connect(url(gw, "stable")) as ws:
                with contextlib.suppress(ConnectionClosed):
                    await ws.recv()
        assert len(set(seen)) == 1


async def test_oversized_frame_closes_1009():
    async with plain_server() as b, gateway([b], max_frame_bytes=4096) as gw:
        async with connect(url(gw), max_size=None, compression=None) as ws:
            await ws.send(b"x" * 5000)
            with pytest.raises(ConnectionClosed) as exc:
                await ws.recv()
            assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009


async def test_rejections_are_http():
    async with plain_server() as b, gateway([b]) as gw:
        with pytest.raises(InvalidStatus) as exc:
            await connect(f"ws://127.0.0.1:{gw.port}/ws")
        assert exc.value.response.status_code == 400
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(b"GET /ws?key=a HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await r.read(200)
        assert head.startswith(b"HTTP/1.1 426")
        w.close()


async def test_unreachable_owner_falls_over_in_static_mode():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        async with plain_server() as live, gateway([dead, live]) as gw:
            for i in range(10):  # some keys hash to the dead node; all must get through
                async with connect(url(gw, f"k{i}")) as ws:
                    await ws.send("ping")
                    assert await ws.recv() == "ping"


class FlipDirectory:
    """Routes to ``first`` at epoch 1 until told the table changed."""

    def __init__(self, first: str, second: str):
        self.addrs = {first: first, second: second}
        self.current = first
        self.first, self.second = first, second

    def route(self, key: str) -> Route:
        node = self.current
        self.current = self.second  # a fresh table after the owner answered 421
        return Route(node, 1, 1 if node == self.first else 2)

    def address(self, node: str) -> tuple[str, int]:
        h, p = node.rsplit(":", 1)
        return h, int(p)

    def fallback(self, key: str, exclude: set[str]) -> None:
        return None

    def retry_after(self, node: str) -> None:
        return None

    def view(self) -> dict[str, Any]:
        return {}


async def test_421_reroutes_to_new_owner():
    def refuse(conn: ServerConnection, request: Any) -> Any:
        return conn.respond(421, "not mine\n")

    async with plain_server(echo, process_request=refuse) as wrong, plain_server() as right:
        d = FlipDirectory(wrong, right)
        async with gateway([], directory=d, control_secret="x" * 16) as gw:
            async with connect(url(gw)) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            assert gw.metrics.reroutes._value.get() == 1


async def test_half_open_handshake_flood_times_out_and_others_still_work():
    async with (
        plain_server() as b,
        gateway([b], handshake_timeout_s=0.5, max_pending_per_ip=0) as gw,
    ):
        writers = []
        for _ in range(300):
            _, w = await asyncio.open_connection("127.0.0.1", gw.port)
            w.write(b"GET /ws?key=a HTTP/1.1\r\nHost: x\r\n")  # never finished
            writers.append(w)
        async with connect(url(gw)) as ws:
            await ws.send("alive")
            assert await ws.recv() == "alive"
        await asyncio.sleep(1.0)
        assert len(gw.conns) == 0
        assert gw.metrics.rejected.labels("408")._value.get() == 300
        for w in writers:
            w.close()


async def test_slow_client_is_cut_off_and_others_unaffected():
    async with plain_server(flood) as b, gateway([b], slow_consumer_s=0.5) as gw:
        r, w = await asyncio.open_connection("127.0.0.1", gw.port, limit=1024)
        w.write(
            b"GET /ws?key=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await r.readuntil(b"\r\n\r\n")
        # ... and never read again. The gateway's buffer for it must stay bounded.
        for _ in range(30):
            await asyncio.sleep(0.1)
            for c in gw.conns:
                if c.transport is not None:
                    assert c.transport.get_write_buffer_size() < 2 * 1024 * 1024
        await asyncio.sleep(1.5)
        assert gw.metrics.slow_consumers._value.get() == 1
        assert not gw.conns
        w.close()


async def test_drain_closes_with_1001_and_window():
    async with plain_server() as b, gateway([b], drain_window_s=0.3, drain_deadline_s=3) as gw:
        conns = [await connect(url(gw, f"k{i}")) for i in range(5)]
        drain = asyncio.create_task(gw.drain())
        for ws in conns:
            with pytest.raises(ConnectionClosed) as exc:
                await ws.recv()
            assert exc.value.rcvd is not None and exc.value.rcvd.code == 1001
            assert CloseHint.decode(exc.value.rcvd.reason).window_ms == 300
        await asyncio.wait_for(drain, 5)
        with pytest.raises(InvalidStatus) as st:
            await connect(url(gw))
        assert st.value.response.status_code == 503


async def test_tokens():
    secret = "s" * 32
    async with plain_server() as b, gateway([b], jwt_secret=secret) as gw:
        good = make_token(secret, "alice", ["room:*"])
        async with connect(url(gw), additional_headers={"Authorization": f"Bearer {good}"}) as ws:
            await ws.send("ok")
            assert await ws.recv() == "ok"
        for token, status in (
            (None, 401),
            ("garbage", 401),
            (make_token(secret, "alice", ["room:*"], ttl_s=-60), 401),
            (make_token(secret, "alice", ["room:*"], ttl_s=-2), 401),  # no leeway by default
            (make_token("x" * 32, "alice", ["room:*"]), 401),
            (make_token(secret, "alice", ["doc:*"]), 403),
        ):
            headers = {"Authorization": f"Bearer {token}"} if token else None
            with pytest.raises(InvalidStatus) as exc:
                await connect(url(gw), additional_headers=headers)
            assert exc.value.response.status_code == status
        with pytest.raises(Unauthorized):
            async with Client(f"ws://127.0.0.1:{gw.port}/ws", "room:1", token="bad"):
                pass


async def test_admission_control_sheds_new_upgrades():
    async with plain_server() as b, gateway([b]) as gw, connect(url(gw)) as ws:
        gw.admission = lambda: 3
        with pytest.raises(InvalidStatus) as exc:
            await connect(url(gw))
        assert exc.value.response.status_code == 503
        assert exc.value.response.headers["Retry-After"] == "3"
        await ws.send("existing sessions keep running")
        assert await ws.recv() == "existing sessions keep running"


async def test_connection_limit_answers_503():
    async with plain_server() as b, gateway([b], max_connections=2) as gw:
        a = await connect(url(gw))
        b2 = await connect(url(gw))
        with pytest.raises(InvalidStatus) as exc:
            await connect(url(gw))
        assert exc.value.response.status_code == 503
        await a.close()
        await b2.close()


def test_close_code_constants():
    assert CloseCode.SLOW_CONSUMER == 4001


async def test_drained_client_answering_the_close_is_let_go_at_once():
    """The client's close answer ends its connection; nobody waits for close_linger_s (5 s)."""
    async with plain_server() as b, gateway([b], drain_window_s=0.1, drain_deadline_s=30) as gw:
        conns = [await connect(url(gw, f"k{i}")) for i in range(3)]
        async with asyncio.timeout(4):
            drain = asyncio.create_task(gw.drain())
            for ws in conns:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert await drain is True


async def test_tls_termination(tmp_path):
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(cafile=str(cert))
    async with plain_server() as b, gateway([b], tls_cert=str(cert), tls_key=str(key)) as gw:
        async with connect(f"wss://127.0.0.1:{gw.port}/ws?key=t", ssl=ctx) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"


async def test_per_address_limit_answers_429():
    async with plain_server() as b, gateway([b], max_conns_per_ip=2) as gw:
        a = await connect(url(gw))
        b2 = await connect(url(gw))
        with pytest.raises(InvalidStatus) as exc:
            await connect(url(gw))
        assert exc.value.response.status_code == 429
        assert exc.value.response.headers["Retry-After"] == "1"
        await a.close()
        await asyncio.sleep(0.1)
        c = await connect(url(gw))  # a slot freed up
        await c.close()
        await b2.close()


async def report_path(ws: ServerConnection) -> None:
    assert ws.request is not None
    await ws.send(ws.request.path)
    with contextlib.suppress(ConnectionClosed):
        await ws.recv()


async def test_query_token_never_reaches_the_backend():
    secret = "s" * 32
    token = make_token(secret, "alice", ["room:*"])
    async with plain_server(report_path) as b, gateway([b], jwt_secret=secret) as gw:
        async with connect(f"ws://127.0.0.1:{gw.port}/ws?key=room:1&token={token}&v=2") as ws:
            path = await ws.recv()
        assert path == "/ws?key=room:1&v=2"


UPGRADE = (
    b"GET /ws?key=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n"
)


async def raw_status(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    head = await asyncio.wait_for(r.read(200), 5)
    w.close()
    return head[:12]


async def test_head_limit_and_http_version_over_a_socket():
    async with plain_server() as b, gateway([b]) as gw:
        big = UPGRADE + b"X-Big: " + b"x" * (71 * 1024) + b"\r\n\r\n"  # one write
        assert await raw_status(gw.port, big) == b"HTTP/1.1 431"
        old = UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0", 1) + b"\r\n"
        assert await raw_status(gw.port, old) == b"HTTP/1.1 400"
        assert await raw_status(gw.port, UPGRADE + b"\r\n") == b"HTTP/1.1 101"


async def test_ping_flood_is_closed_1008_and_others_unaffected():
    async with (
        plain_server() as b,
        gateway([b], control_frame_rate=10, control_frame_burst=20) as gw,
        connect(url(gw, "witness")) as witness,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(UPGRADE.replace(b"key=a", b"key=flood") + b"\r\n")
        assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        ping = b"\x89\x80abcd"  # masked, empty
        for _ in range(100):
            w.write(ping * 100)
        with contextlib.suppress(ConnectionResetError):  # unread pings: the close may reset
            while await asyncio.wait_for(r.read(65536), 5):
                pass
        assert gw.metrics.violations.labels("1008")._value.get() == 1
        w.close()
        await witness.ping()  # a few pings are fine
        await witness.send("still here")
        assert await witness.recv() == "still here"


async def open_from(port: int, source: str, n: int, data: bytes = b"") -> list[Any]:
    """``n`` raw connections from the loopback address ``source``; each sends ``data``."""
    out = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        if data:
            w.write(data)
        out.append((r, w))
    return out


def test_per_address_limits_are_on_by_default():
    cfg = GatewayConfig()
    assert cfg.max_conns_per_ip > 0 and cfg.max_pending_per_ip > 0
    assert cfg.max_pending_handshakes > 0


async def test_unfinished_upgrades_per_address_answer_429():
    async with plain_server() as b, gateway([b], max_pending_per_ip=8) as gw:
        idle = await open_from(gw.port, "127.0.0.2", 20, b"GET /ws?key=a HTTP/1.1\r\n")
        answers = [await asyncio.wait_for(r.read(12), 0.5) for r, _ in idle[8:]]
        assert answers == [b"HTTP/1.1 429"] * 12
        assert len(gw.pending) == 8 and gw.pending_per_ip == {"127.0.0.2": 8}
        async with connect(url(gw)) as ws:  # another address is not affected
            await ws.send("served")
            assert await ws.recv() == "served"
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.2)
        assert not gw.pending and not gw.pending_per_ip


async def test_full_pending_table_drops_the_oldest_unfinished_upgrade():
    async with (
        plain_server() as b,
        gateway([b], max_pending_handshakes=20, max_pending_per_ip=0) as gw,
    ):
        idle = await open_from(gw.port, "127.0.0.2", 20, b"GET /ws?key=a HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        assert len(gw.pending) == 20
        for i in range(5):  # each new client pushes the oldest idle connection out, gets in
            async with connect(url(gw, f"w{i}")) as ws:
                await ws.send("served")
                assert await ws.recv() == "served"
            idle += await open_from(gw.port, "127.0.0.2", 1, b"GET /ws?key=a HTTP/1.1\r\n")
            await asyncio.sleep(0.05)
            assert len(gw.pending) == 20
        assert gw.metrics.evicted._value.get() == 5
        for r, _ in idle[:5]:  # the oldest went first
            assert await asyncio.wait_for(r.read(), 1) == b""
        for _, w in idle:
            w.close()


async def test_tls_connections_count_before_their_handshake(tmp_path):
    cert, key = make_cert(tmp_path)
    async with (
        plain_server() as b,
        gateway([b], tls_cert=str(cert), tls_key=str(key), max_pending_per_ip=4) as gw,
    ):
        idle = await open_from(gw.port, "127.0.0.2", 10)  # never start TLS
        await asyncio.sleep(0.2)
        assert len(gw.pending) == 4 and len(gw.conns) == 4
        ctx = ssl.create_default_context(cafile=str(cert))
        async with connect(f"wss://127.0.0.1:{gw.port}/ws?key=t", ssl=ctx) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
        for _, w in idle:
            w.close()
        await asyncio.sleep(0.2)
        assert not gw.conns and not gw.pending
