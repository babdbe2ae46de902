"""The asyncio client applications embed, and its synchronous facade."""

from clientlib.client.client import Client, ClientStats, Event
from clientlib.client.errors import (
    ClientClosed,
    ClientError,
    GaveUp,
    HandshakeRefused,
    SendBufferFull,
    ServerProtocolError,
    StartTimeout,
    TerminalClose,
    Unauthorized,
)
from clientlib.client.sync import SyncClient

__all__ = [
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "Event",
    "GaveUp",
    "HandshakeRefused",
    "SendBufferFull",
    "ServerProtocolError",
    "StartTimeout",
    "SyncClient",
    "TerminalClose",
    "Unauthorized",
]
