"""A client's connection through the gateway to a node, as the two ends see it.

The gateway relays bytes (it does not decode them), so the path client →
gateway → node is one ordered stream each way: a :class:`~loadtest.sim.network.Link`.
On it travel ``("frame", raw)`` and ``("close", code, reason)``. The node's end
is a real :class:`~backend.session_conn.SessionConn`; the client's end is the
client actor. Who notices a broken connection, and when, depends on how it broke:

* ``reset``: both ends are told (after a latency); what was in flight is lost;
* ``client_lost``: the client gives up at once (a ping timeout), what it had sent
  still reaches the node, which notices only later (a half-open connection: the
  client's next connection may overtake the last frames of this one);
* ``node_gone``: the node's process died: the gateway sends the client its
  ``1001`` after what the node had already written, and nothing reaches the node;
* ``gateway_gone``: the relay died: both ends are told, in-flight frames are lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backend.session_conn import SessionConn
from clientlib.kernel.session_protocol import CloseCode, CloseHint
from loadtest.sim.network import Link

if TYPE_CHECKING:
    from loadtest.sim.backend_actor import BackendActor
    from loadtest.sim.client_actor import ClientActor

__all__ = ["DataConn"]

NODE_NOTICES_S = 5.0  # the longest a node takes to notice a client that vanished
CLOSE_TIMEOUT_S = 5.0  # the server's close handshake gives up after this


class DataConn:
    __slots__ = (
        "client",
        "client_open",
        "close_sent",
        "id",
        "inc",
        "key",
        "link",
        "node",
        "node_open",
        "sc",
    )

    def __init__(self, cid: int, client: ClientActor, node: BackendActor, key: str, epoch: int):
        self.id = cid
        self.client = client
        self.node = node
        self.inc = node.inc
        self.key = key
        self.client_open = False  # set when the client has its 101
        self.node_open = True
        self.close_sent = False
        world = node.world
        self.link = Link(
            world.net,
            client.name,
            node.name,
            self._to_client,
            self._to_node,
            detect_s=world.scenario.detect_s,
            on_dead=lambda: self.break_("reset"),
        )
        assert node.node is not None
        self.sc = SessionConn(node.node, key, epoch, lambda: node.woken(self))

    def __repr__(self) -> str:
        return f"conn{self.id}"

    # ------------------------------------------------------------------ traffic

    def client_send(self, item: tuple[Any, ...]) -> None:
        self.link.a_to_b.send(item)

    def node_send(self, item: tuple[Any, ...]) -> None:
        self.link.b_to_a.send(item)

    def _to_node(self, item: tuple[Any, ...]) -> None:
        if self.node_open:
            self.node.on_conn_item(self, item)

    def _to_client(self, item: tuple[Any, ...]) -> None:
        if self.client_open:
            self.client.on_conn_item(self, item)

    def flush(self) -> None:
        """The node side writes what its session has due, then its close if one is wanted."""
        if not self.node_open or self.close_sent:
            return
        for f in self.sc.frames_due():
            self.node_send(("frame", f))
        if self.sc.closing is not None:
            code, reason = self.sc.closing
            self.close_sent = True
            self.node_send(("close", code, reason))
            self.node.world.sched.after(CLOSE_TIMEOUT_S, self.node_closed, None)

    # ------------------------------------------------------------------ endings

    def node_closed(self, client_code: int | None) -> None:
        """The node's end is finished (the close handshake ended, or the link died)."""
        if not self.node_open:
            return
        self.node_open = False
        self.node.run(self.inc, self.sc.closed, client_code)
        self.node.conns.pop(self.id, None)
        if not self.client_open:
            self.link.cut()

    def client_closed(self) -> None:
        self.client_open = False
        if not self.node_open:
            self.link.cut()

    def break_(self, how: str) -> None:
        """The connection breaks; see the module doc for ``how``."""
        world = self.node.world
        sched = world.sched
        world.trace.log(sched.now, f"{self} {self.client.name}-{self.node.name} {how}")
        if how == "client_lost":
            if self.client_open:
                self.client_open = False
                self.client.conn_lost(self, None, "")
            sched.after(world.rng.random() * NODE_NOTICES_S, self._node_lost)
            return
        if how == "node_gone":
            self.node_open = False
            self.node.conns.pop(self.id, None)
            self.link.a_to_b.cut()
            self.node_send(("close", CloseCode.GOING_AWAY, CloseHint(window_ms=1000).encode()))
            return
        # reset, gateway_gone: both ends told after a latency, in-flight lost.
        self.link.cut()
        if self.client_open:
            self.client_open = False
            sched.after(world.net.latency(), self.client.conn_lost, self, None, "")
        if self.node_open:
            sched.after(world.net.latency(), self.node_closed, None)

    def _node_lost(self) -> None:
        self.link.cut()
        self.node_closed(None)

    def gateway_cut(self) -> None:
        """The gateway's route check: the client gets 4003, the node a 1001."""
        self.node.world.trace.log(self.node.world.sched.now, f"{self} cut by the route check")
        self.node_send(("close", CloseCode.NOT_OWNER, ""))
        self.client_send(("close", CloseCode.GOING_AWAY, ""))
