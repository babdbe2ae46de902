"""The upgrade handshake on both hops, parsed with h11. Sans-I/O.

Client side: validate the upgrade (RFC 6455 §4.2.1) and extract the routing
key and token. Backend side: build the forwarded request and read the answer.
Rejections are short HTTP responses; nothing here touches a socket.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, quote, unquote_plus, urlsplit

import h11

from clientlib.kernel.credentials import quote_key
from clientlib.kernel.routing import MAX_KEY_LEN

__all__ = [
    "BackendAnswer",
    "HandshakeError",
    "Upgrade",
    "UpgradeParser",
    "forward_request",
    "http_response",
    "read_answer",
    "switching_protocols",
]


class HandshakeError(Exception):
    """The upgrade is refused with an HTTP status; ``headers`` go into the response."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A valid upgrade. ``target`` is what the backend is sent: the client's request target
    without its ``token`` query parameter (a credential for the gateway, never forwarded)."""

    target: str
    headers: list[tuple[bytes, bytes]]
    key: str
    token: str | None
    origin: str | None


@functools.lru_cache(maxsize=64)  # refusals repeat; under a flood they are made by the thousand
def http_response(status: int, body: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    phrase = HTTPStatus(status).phrase
    text = (body or phrase) + "\n"
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(text.encode())}\r\nConnection: close\r\n{extra}\r\n{text}"
    ).encode()


class UpgradeParser:
    """Feed client bytes; returns an :class:`Upgrade` once a valid request is complete."""

    __slots__ = (
        "_conn",
        "_fed",
        "key_header",
        "max_bytes",
        "path_prefix",
        "require_key",
        "trailing",
    )

    def __init__(
        self,
        *,
        max_bytes: int = 16384,
        path_prefix: str = "/",
        key_header: str = "x-routing-key",
        require_key: bool = True,
    ):
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
        self._fed = 0  # bytes fed so far
        self.max_bytes = max_bytes
        self.path_prefix = path_prefix
        self.key_header = key_header.lower().encode()
        self.trailing = b""
        self.require_key = require_key

    @property
    def fed(self) -> int:
        """Bytes fed so far."""
        return self._fed

    def feed(self, data: bytes) -> Upgrade | None:
        conn = self._conn
        self._fed += len(data)
        try:
            conn.receive_data(data)
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            raise HandshakeError(
                status if status in (400, 413, 414, 431) else 400, "malformed HTTP request"
            ) from exc
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):
            raise HandshakeError(400, "malformed HTTP request")
        # Anything after the request head (a client that did not wait for 101) is kept.
        try:
            while conn.next_event() not in (h11.PAUSED, h11.NEED_DATA):
                pass
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(400, "upgrade request with a body") from exc
        trailing = conn.trailing_data[0]
        # h11 bounds only a head still incomplete; one that arrived whole is measured here.
        if self._fed - len(trailing) > self.max_bytes:
            raise HandshakeError(431, "request head too large")
        upgrade = self._validate(event)
        self.trailing = trailing
        return upgrade

    def _validate(self, req: h11.Request) -> Upgrade:
        if req.method != b"GET":
            raise HandshakeError(405, "WebSocket upgrades use GET", (("Allow", "GET"),))
        if req.http_version < b"1.1":
            # RFC 6455 §4.1/§4.2.1: HTTP/1.1 or higher; a mismatched handshake gets 400.
            raise HandshakeError(400, "WebSocket upgrades need HTTP/1.1")
        # RFC 3986 targets are ASCII (keys percent-encoded as UTF-8); a client that sends
        # raw UTF-8 is read as such rather than refused.
        try:
            target = req.target.decode("utf-8")
        except UnicodeDecodeError:
            target = req.target.decode("latin-1")
        parts = urlsplit(target)
        if not parts.path.startswith(self.path_prefix):
            raise HandshakeError(404, "no WebSocket endpoint at this path")
        h: dict[bytes, bytes] = {}
        for name, value in req.headers:
            h[name] = h[name] + b"," + value if name in h else value
        if b"websocket" not in [t.strip() for t in h.get(b"upgrade", b"").lower().split(b",")]:
            raise HandshakeError(
                426,
                "this endpoint needs a WebSocket upgrade",
                (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")),
            )
        if b"upgrade" not in [t.strip() for t in h.get(b"connection", b"").lower().split(b",")]:
            raise HandshakeError(400, "Connection header must include Upgrade")
        if h.get(b"sec-websocket-version", b"").strip() != b"13":
            raise HandshakeError(
                426, "unsupported WebSocket version", (("Sec-WebSocket-Version", "13"),)
            )
        try:
            raw = base64.b64decode(h.get(b"sec-websocket-key", b""), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            raise HandshakeError(400, "missing or invalid Sec-WebSocket-Key")
        try:
            query = parse_qs(parts.query, errors="strict")
        except UnicodeDecodeError:
            raise HandshakeError(400, "query is not valid percent-encoded UTF-8") from None
        key = query.get("key", [None])[0] or _utf8_header(h.get(self.key_header))
        if not key:
            if self.require_key:
                raise HandshakeError(400, "missing routing key (?key=… or header)")
            key = ""
        if len(key) > MAX_KEY_LEN or not key.isprintable():
            raise HandshakeError(400, "invalid routing key")
        token = query.get("token", [None])[0]
        auth = _text(h.get(b"authorization"))
        if token is None and auth and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        return Upgrade(
            _without_token(target), list(req.headers), key, token, _text(h.get(b"origin"))
        )


def _without_token(target: str) -> str:
    """The target without any ``token`` query parameter (however its name is encoded)."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != "token"]
    return f"{path}?{'&'.join(kept)}" if kept else path


def _utf8_header(v: bytes | None) -> str | None:
    """The routing key header: UTF-8, as a key is everywhere else (a Latin-1 reading
    would make ``café`` another key, maybe on another node)."""
    if v is None:
        return None
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError:
        raise HandshakeError(400, "routing key header is not valid UTF-8") from None


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode("latin-1")


# Headers the gateway sets itself; a client's own copies are dropped (never trusted).
_OWN_HEADERS = frozenset(
    {
        b"x-route-key",
        b"x-route-slot",
        b"x-route-epoch",
        b"x-route-proof",
        b"x-forwarded-for",
        b"x-request-id",
        b"authorization",
    }
)


def forward_request(
    up: Upgrade,
    *,
    key: str,
    slot: int,
    epoch: int,
    client_ip: str,
    request_id: str,
    proof: str | None = None,
) -> tuple[h11.Connection, bytes]:
    """The upgrade to send to a backend, and the h11 connection to read its answer with.

    The key travels percent-encoded (headers are ASCII; keys may be any script);
    ``proof`` is the gateway's signed route claim (``X-Route-Proof``)."""
    headers = [(n, v) for n, v in up.headers if n not in _OWN_HEADERS]
    headers += [
        (b"x-route-key", quote_key(key).encode()),
        (b"x-route-slot", str(slot).encode()),
        (b"x-route-epoch", str(epoch).encode()),
        (b"x-forwarded-for", client_ip.encode()),
        (b"x-request-id", request_id.encode()),
    ]
    if proof is not None:
        headers.append((b"x-route-proof", proof.encode()))
    target = up.target if up.target.isascii() else quote(up.target, safe=_URI_CHARS)
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16384)
    data = conn.send(h11.Request(method="GET", target=target, headers=headers))
    return conn, data or b""


# Characters a request target may carry as they are (RFC 3986 reserved + unreserved + %).
_URI_CHARS = "/?#[]@!$&'()*+,;=-._~%:"


@dataclass(frozen=True, slots=True)
class BackendAnswer:
    status: int
    headers: list[tuple[bytes, bytes]]
    trailing: bytes


def read_answer(conn: h11.Connection, data: bytes) -> BackendAnswer | None:
    """Feed backend bytes; the answer once its head is complete. HandshakeError(502) if bad."""
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HandshakeError(502, "bad answer from backend") from exc
    if event is h11.NEED_DATA:
        return None
    if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
        return BackendAnswer(101, list(event.headers), conn.trailing_data[0])
    if isinstance(event, h11.Response | h11.InformationalResponse):
        return BackendAnswer(event.status_code, list(event.headers), b"")
    raise HandshakeError(502, "bad answer from backend")


def switching_protocols(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The backend's 101, passed back to the client with its own headers."""
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    return b"HTTP/1.1 101 Switching Protocols\r\n" + lines + b"\r\n"
