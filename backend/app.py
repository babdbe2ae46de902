"""The API a stateful app implements, and the context its handlers receive.

An app is a class with four handlers and two state hooks. The framework keeps
one :class:`KeyContext` per active routing key on the node that owns it, calls
the handlers one at a time per key (no locks needed in app code), and moves the
state with the key when the control plane reassigns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = [
    "App",
    "KeyContext",
    "SessionHandle",
]


class SessionHandle(Protocol):
    """What an app sees of one client session."""

    @property
    def sid(self) -> str: ...


class KeyContext:
    """One active key: its state, its sessions, and how to talk to them.

    ``sessions`` are the sessions connected right now; ``members`` also holds
    those that are between connections and may still resume (within the
    backend's ``session_ttl_s``). A broadcast goes to every member: what a
    member misses while it reconnects (after a move, say) is in its replay
    buffer and reaches it when it resumes, exactly once, in order.
    """

    __slots__ = ("_send", "key", "members", "sessions", "state")

    def __init__(
        self,
        key: str,
        state: Any,
        send: Callable[[SessionHandle, Any], None],
        members: Mapping[str, SessionHandle] | None = None,
    ):
        self.key = key
        self.state = state
        self.sessions: dict[str, SessionHandle] = {}
        self.members: Mapping[str, SessionHandle] = (
            members if members is not None else self.sessions
        )
        self._send = send

    def send(self, session: SessionHandle, data: Any) -> None:
        """Queue ``data`` (JSON-able) to one session; delivered exactly once, in order."""
        self._send(session, data)

    def broadcast(self, data: Any, *, exclude: SessionHandle | None = None) -> None:
        """Queue ``data`` to every member of this key, connected or resuming."""
        for s in list(self.members.values()):
            if s is not exclude:
                self._send(s, data)


class App:
    """Base class for apps; override what you need. Handlers must not block."""

    name = "app"

    def initial_state(self, key: str) -> Any:
        """State of a key seen for the first time."""
        return None

    def dump_state(self, state: Any) -> Any:
        """JSON-able form of a key's state, for handoff and checkpoints."""
        return state

    def load_state(self, key: str, obj: Any) -> Any:
        """Inverse of :meth:`dump_state`."""
        return obj

    def on_join(self, ctx: KeyContext, session: SessionHandle, resumed: bool) -> None:
        """A session attached to the key (new, or resumed after a reconnect)."""

    def on_message(self, ctx: KeyContext, session: SessionHandle, data: Any) -> None:
        """A message from a session, delivered exactly once and in order."""

    def on_leave(self, ctx: KeyContext, session: SessionHandle) -> None:
        """A session's connection ended (it may still resume later)."""
