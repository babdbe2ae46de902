"""A node's control session with the plane: encoded control messages over one link.

The real session is a WebSocket over TCP: ordered, and "loss" means the
connection drops (both sides see it, the node registers again). That is what
this models by default. With the profile's adversarial control faults on, a
message may also be lost, duplicated or delivered out of order while the
session goes on: a superset of what TCP allows, to see what the protocol
tolerates beyond its transport's guarantees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clientlib.kernel import control_protocol as cp
from loadtest.sim.network import Link

if TYPE_CHECKING:
    from loadtest.sim.backend_actor import BackendActor
    from loadtest.sim.world import World

__all__ = ["PLANE", "ControlSession"]

PLANE = "plane"  # the gateway host: the control plane and the relays


class ControlSession:
    def __init__(self, world: World, sid: int, backend: BackendActor):
        self.world = world
        self.id = sid
        self.backend = backend
        self.node = backend.name
        self.inc = backend.inc
        self.registered = False  # the plane's side: a register was accepted on it
        self.open = True
        self.link = Link(
            world.net,
            backend.name,
            PLANE,
            self._to_node,
            self._to_plane,
            detect_s=world.scenario.heartbeat_s,
            on_dead=lambda: self.drop("heartbeat"),
        )

    def __repr__(self) -> str:
        return f"ctl{self.id}"

    def _send(self, to_plane: bool, msg: cp.ControlMessage) -> None:
        pipe = self.link.a_to_b if to_plane else self.link.b_to_a
        raw = self.world.encode_control(msg)
        chaos = self.world.faults.ctl_chaos
        rng = self.world.rng
        if chaos > 0:
            r = rng.random()
            if r < chaos:
                self.world.trace.log(self.world.sched.now, f"{self} lost {_name(msg)}")
                return
            if r < 2 * chaos:
                pipe.send(raw, ordered=False, extra=rng.random() * 0.5)  # a late duplicate
            elif r < 3 * chaos:
                pipe.send(raw, ordered=False, extra=rng.random() * 0.5)  # overtaken
                return
        pipe.send(raw)

    def to_plane(self, msg: cp.ControlMessage) -> None:
        if self.open:
            self._send(True, msg)

    def to_node(self, msg: cp.ControlMessage) -> None:
        if self.open:
            self._send(False, msg)

    def _to_node(self, raw: bytes) -> None:
        self.backend.on_ctl(self, raw)

    def _to_plane(self, raw: bytes) -> None:
        self.world.plane.on_ctl(self, raw)

    def drop(self, why: str) -> None:
        """The session ends (a cut, a heartbeat timeout, a close by either side): each
        side notices after a latency; what was in flight is lost."""
        if not self.open:
            return
        self.open = False
        self.link.cut()
        self.world.trace.log(self.world.sched.now, f"{self} {self.node} dropped ({why})")
        net = self.world.net
        self.world.sched.after(net.latency(), self.backend.ctl_lost, self)
        self.world.sched.after(net.latency(), self.world.plane.session_lost, self)


def _name(msg: cp.ControlMessage) -> str:
    return type(msg).__name__
