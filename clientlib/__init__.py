"""The cooperating client library and the wire protocol it shares with gateway and backend."""

from clientlib.backoff import BackoffPolicy
from clientlib.client import Client, ClientStats, Event
from clientlib.errors import (
    ClientClosed,
    ClientError,
    HandshakeRefused,
    SendBufferFull,
    ServerProtocolError,
    StartTimeout,
    TerminalClose,
    Unauthorized,
)
from clientlib.sync import SyncClient

__all__ = [
    "BackoffPolicy",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "Event",
    "HandshakeRefused",
    "SendBufferFull",
    "ServerProtocolError",
    "StartTimeout",
    "SyncClient",
    "TerminalClose",
    "Unauthorized",
]
