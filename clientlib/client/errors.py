"""The client library's exceptions. Users catch these, never websockets' or OSError.

ClientError
├── ClientClosed          the app closed the client (or it ended); no more sends
├── TerminalClose         the server said stop (4500-4999, 1000, 1002, 1008…); not retried
│   └── Unauthorized      4500 / HTTP 401: bad or expired token
├── HandshakeRefused      the upgrade got a final HTTP error (400, 403, 404, 426)
├── SendBufferFull        send() with on_full="raise" while the bounded buffer is full
├── StartTimeout          the first connection did not come up in time
├── GaveUp                no session for longer than give_up_after (an app's choice)
└── ServerProtocolError   the server broke the session protocol
"""

from __future__ import annotations

__all__ = [
    "ClientClosed",
    "ClientError",
    "GaveUp",
    "HandshakeRefused",
    "SendBufferFull",
    "ServerProtocolError",
    "StartTimeout",
    "TerminalClose",
    "Unauthorized",
]


class ClientError(Exception):
    """Base of every exception the client library raises."""


class ClientClosed(ClientError):
    """The client is closed; sends and receives fail with this."""


class TerminalClose(ClientError):
    """The server closed with a code that means "do not reconnect"."""

    def __init__(self, code: int, reason: str = ""):
        super().__init__(f"server closed the session with code {code} {reason}".strip())
        self.code = code
        self.reason = reason


class Unauthorized(TerminalClose):
    """The token was missing, invalid or expired."""


class HandshakeRefused(ClientError):
    """The upgrade was refused with a final HTTP status."""

    def __init__(self, status: int, body: str = ""):
        super().__init__(f"upgrade refused with HTTP {status}: {body}".strip(": "))
        self.status = status


class SendBufferFull(ClientError):
    """The bounded send buffer is full (policy on_full="raise")."""


class StartTimeout(ClientError):
    """No session could be established within start_timeout."""


class ServerProtocolError(ClientError):
    """The server sent something the session protocol does not allow."""


class GaveUp(ClientError):
    """No session could be had for longer than the client's ``give_up_after``."""
