import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.handshake import HandshakeError, UpgradeParser, forward_request, read_answer

KEY = base64.b64encode(b"0123456789abcdef").decode()


def req(target="/ws?key=room:1", **headers: str) -> bytes:
    h = {
        "Host": "gw",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = "".join(f"{k}: {v}\r\n" for k, v in h.items() if v is not None)
    return f"GET {target} HTTP/1.1\r\n{lines}\r\n".encode()


def parse(data: bytes, **kw):
    return UpgradeParser(**kw).feed(data)


def test_valid_upgrade():
    up = parse(req(Authorization="Bearer tok", Origin="https://a"))
    assert up is not None
    assert (up.key, up.token, up.origin, up.target) == (
        "room:1",
        "tok",
        "https://a",
        "/ws?key=room:1",
    )


def test_key_from_header_and_token_from_query():
    up = parse(req("/ws?token=abc", **{"X-Routing-Key": "doc:9"}))
    assert up is not None and up.key == "doc:9" and up.token == "abc"


def test_incremental_and_trailing_data():
    p = UpgradeParser()
    head = req()
    for i in range(len(head) - 1):
        assert p.feed(head[i : i + 1]) is None
    up = p.feed(head[-1:] + b"\x81\x85early")
    assert up is not None and p.trailing == b"\x81\x85early"


@pytest.mark.parametrize(
    "data,status",
    [
        (b"POST /ws?key=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (req("/other?key=a"), 404),
        (req(Upgrade=None), 426),
        (req(Connection="keep-alive"), 400),
        (req(Sec_WebSocket_Version="8"), 426),
        (req(Sec_WebSocket_Key=None), 400),
        (req(Sec_WebSocket_Key="short"), 400),
        (req("/ws"), 400),  # no routing key
        (req("/ws?key=" + "k" * 300), 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    ],
)
def test_rejections(data, status):
    with pytest.raises(HandshakeError) as exc:
        parse(data, path_prefix="/ws")
    assert exc.value.status == status


def test_oversized_head():
    data = req(X_Big="x" * 20000)
    with pytest.raises(HandshakeError) as exc:
        p = UpgradeParser(max_bytes=4096)
        for i in range(0, len(data), 1000):
            p.feed(data[i : i + 1000])
    assert exc.value.status in (400, 413, 431)


def test_oversized_head_in_one_piece_is_refused():
    """The limit is on the head's total size, however it arrives (71 KiB in one write)."""
    data = req(X_Big="x" * 71 * 1024)
    with pytest.raises(HandshakeError) as exc:
        UpgradeParser(max_bytes=16384).feed(data)
    assert exc.value.status == 431


def test_head_limit_leaves_early_frames_out():
    """Frames sent right after the head (no wait for 101) do not count against the limit."""
    head = req()
    p = UpgradeParser(max_bytes=len(head))
    up = p.feed(head + b"\x82\x80abcd" * 2000)
    assert up is not None and len(p.trailing) == 12000


def test_http_10_upgrade_is_refused():
    data = req().replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with pytest.raises(HandshakeError) as exc:
        parse(data)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "target,forwarded",
    [
        ("/ws?key=a&token=SECRET", "/ws?key=a"),
        ("/ws?token=SECRET&key=a", "/ws?key=a"),
        ("/ws?token=SECRET", "/ws"),
        ("/ws?key=a&to%6Ben=SECRET&x=1", "/ws?key=a&x=1"),
        ("/ws?key=a&token=S1&token=S2", "/ws?key=a"),
        ("/ws?key=a&tokens=keep&token=S", "/ws?key=a&tokens=keep"),
    ],
)
def test_token_is_not_forwarded(target, forwarded):
    up = parse(req(target, **{"X-Routing-Key": "a"}))
    assert up is not None and up.token is not None and up.token.startswith("S")
    assert up.target == forwarded
    _, data = forward_request(up, key=up.key, slot=1, epoch=1, client_ip="", request_id="r")
    assert b"SECRET" not in data and b"S1" not in data


@given(st.binary(max_size=600))
def test_fuzz_parser_only_raises_handshake_error(data):
    try:
        UpgradeParser().feed(data)
    except HandshakeError as exc:
        assert 400 <= exc.status < 500


def test_forward_request_strips_spoofed_headers():
    up = parse(req(**{"X-Route-Epoch": "999", "X-Forwarded-For": "1.2.3.4"}))
    assert up is not None
    conn, data = forward_request(
        up, key="room:1", slot=5, epoch=7, client_ip="10.0.0.1", request_id="r1"
    )
    text = data.decode().lower()
    assert "x-route-epoch: 7" in text and "999" not in text and "1.2.3.4" not in text
    ans = read_answer(
        conn,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x82\x00",
    )
    assert ans is not None and ans.status == 101 and ans.trailing == b"\x82\x00"


def test_read_answer_421():
    up = parse(req())
    assert up is not None
    conn, _ = forward_request(up, key="k", slot=1, epoch=1, client_ip="", request_id="r")
    assert read_answer(conn, b"HTTP/1.1 421 Misdirected\r\nContent-Length: 0\r\n") is None
    ans = read_answer(conn, b"\r\n")
    assert ans is not None and ans.status == 421
