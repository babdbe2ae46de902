"""The cooperating client library, and the protocol kernel every program shares.

``from clientlib import Client`` is the client applications embed
(:mod:`clientlib.client`); :mod:`clientlib.kernel` is the sans-I/O protocol
the gateway, the backends and the client all speak. The client's names are
loaded on first use, so a server importing the kernel does not import the
asyncio client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clientlib.client import (
        Client,
        ClientClosed,
        ClientError,
        ClientStats,
        Event,
        GaveUp,
        HandshakeRefused,
        SendBufferFull,
        ServerProtocolError,
        StartTimeout,
        SyncClient,
        TerminalClose,
        Unauthorized,
    )
    from clientlib.kernel.backoff import BackoffPolicy

__all__ = [
    "BackoffPolicy",
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


def __getattr__(name: str) -> Any:
    if name == "BackoffPolicy":
        return importlib.import_module("clientlib.kernel.backoff").BackoffPolicy
    if name in __all__:
        return getattr(importlib.import_module("clientlib.client"), name)
    raise AttributeError(f"module 'clientlib' has no attribute {name!r}")
