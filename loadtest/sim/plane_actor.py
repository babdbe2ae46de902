"""The gateway process: the real :class:`~gateway.controlplane.core.ControlCore` over an
:class:`~gateway.controlplane.directory.EmbeddedDirectory` (on a
:class:`~gateway.controlplane.directory.MemoryStorage` that outlives the process),
the control endpoint's rules, and the data plane's routing of upgrades.

It does what ``gateway/controlplane/controller.py``, ``endpoint.py`` and
``gateway/server.py`` do around the cores: tick the core every 0.5 s and carry
out its effects; refuse control messages before ``register`` and from a
replaced session; route an upgrade by the table, re-route after a ``421``
(backing off), answer ``503`` with ``Retry-After`` when the owner is unreachable,
``504`` when it does not answer; cut relays to a node that lost their key three
seconds after the table changed. A crash loses all of it but the storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.session_protocol import ProtocolError
from gateway.controlplane.core import (
    Broadcast,
    ControlCore,
    Disconnect,
    Effect,
    MoveFinished,
    Send,
)
from gateway.controlplane.directory import EmbeddedDirectory, MemoryStorage
from gateway.controlplane.planner import Move
from loadtest.sim.backend_actor import describe
from loadtest.sim.conn import DataConn
from loadtest.sim.control_link import PLANE, ControlSession
from loadtest.sim.scheduler import Timer

if TYPE_CHECKING:
    from loadtest.sim.client_actor import ClientActor
    from loadtest.sim.world import World

__all__ = ["PlaneActor"]

TICK_S = 0.5
ROUTE_GRACE_S = 3.0
REROUTE_RETRIES = 3
CONNECT_TIMEOUT_S = 3.0
HANDSHAKE_TIMEOUT_S = 10.0


class PlaneActor:
    def __init__(self, world: World):
        self.world = world
        self.storage = MemoryStorage()  # the gateway's disk
        self.up = False
        self.incs = 0
        self.core: ControlCore | None = None
        self.sessions: dict[str, ControlSession] = {}  # registered (or registering) by node
        self.open: dict[int, ControlSession] = {}  # every session open on this process
        self.relays: dict[int, DataConn] = {}
        self.upgrading: dict[tuple[str, int], ClientActor] = {}  # upgrades in progress
        self.crash_mid_step = False
        self._route_version = -1
        self._route_check_at = 0.0

    def log(self, what: str) -> None:
        self.world.trace.log(self.world.sched.now, f"plane {what}")

    # ------------------------------------------------------------------ the process

    def start(self) -> None:
        w = self.world
        self.incs += 1
        if self.incs > 1:
            w.count("control plane restarts")
        d = EmbeddedDirectory(self.storage, lease_s=w.scenario.lease_s, clock=w.sched.clock)
        self.core = ControlCore(
            d, w.scenario.core_config(), w.scenario.planner_config(), wall=w.sched.clock
        )
        self.up = True
        self._route_version, self._route_check_at = -1, 0.0
        self.log(f"started (#{self.incs}, epoch {d.epoch}, {len(d.moves)} moves in flight)")
        inc = self.incs
        w.sched.after(TICK_S, self._tick, inc)
        w.sched.after(1.0, self._sweep, inc)

    def crash(self) -> None:
        if not self.up:
            return
        self.log("crashed")
        self.up = False
        self.core = None
        for sess in list(self.open.values()):
            sess.drop("gateway gone")
        self.open.clear()
        self.sessions.clear()
        for conn in list(self.relays.values()):
            conn.break_("gateway_gone")
        self.relays.clear()
        for (_, att), client in self.upgrading.items():  # their sockets are reset
            self.world.sched.after(self.world.net.latency(), client.refused, att, None, None)
        self.upgrading.clear()
        self.crash_mid_step = False

    def apply(self, effects: list[Effect]) -> None:
        if self.crash_mid_step and effects:
            # The step's decisions are in the directory already (written before any
            # effect): a node presumed dead stays presumed dead after the restart.
            for e in effects:
                if isinstance(e, Disconnect):
                    self._declared_dead(e.node, e.reason)
            self.log(f"crashes before sending {len(effects)} effects")
            self.crash()
            return
        for e in effects:
            match e:
                case Send(node, msg):
                    sess = self.sessions.get(node)
                    if sess is not None:
                        sess.to_node(msg)
                case Broadcast(msg):
                    for sess in list(self.sessions.values()):
                        sess.to_node(msg)
                case Disconnect(node, reason):
                    self._declared_dead(node, reason)
                    sess = self.sessions.pop(node, None)
                    if sess is not None:
                        self.open.pop(sess.id, None)
                        sess.drop(f"plane: {reason}")
                case MoveFinished(move, committed, outcome):
                    self.log(f"move {move} {'committed' if committed else outcome}")
                    self.world.count("moves committed" if committed else "moves aborted")

    def _declared_dead(self, node: str, reason: str) -> None:
        """A node presumed dead while it runs nothing (stalled) could not write what it
        held before its keys went elsewhere: it may lose it, as in a crash. One that runs
        has written it already, when its own lease (shorter) ran out."""
        b = self.world.backends.get(node)
        if reason == "lease expired" and b is not None and b.up:
            if b.stalled_until > self.world.sched.now:
                self.world.checker.licence(b.inc)
            elif b.node is not None and b.node.keys:
                # The lease's promise: a running node has stopped serving (and written
                # what it held) before the plane gives its keys away.
                self.world.checker.fail(
                    "single-owner",
                    f"{b.inc} presumed dead while it runs and still holds "
                    f"{sorted(b.node.keys)} (its lease ended at {b.node.lease_until:.3f})",
                )

    def _tick(self, inc: int) -> None:
        if not self.up or inc != self.incs:
            return
        assert self.core is not None
        self.apply(self.core.tick(self.world.sched.now))
        self.world.sched.after(TICK_S, self._tick, inc)

    def _sweep(self, inc: int) -> None:
        if not self.up or inc != self.incs:
            return
        self.check_routes()
        self.world.sched.after(1.0, self._sweep, inc)

    def check_routes(self) -> None:
        """``Gateway.check_routes``: relays to a node that lost their key are cut."""
        assert self.core is not None
        d = self.core.dir
        now = self.world.sched.now
        for cid in [c for c, conn in self.relays.items() if conn.link.cut_done]:
            del self.relays[cid]
        for k in [k for k, c in self.upgrading.items() if not c.waiting(k[1])]:
            del self.upgrading[k]
        if d.version() != self._route_version:
            self._route_version = d.version()
            self._route_check_at = now + ROUTE_GRACE_S
            return
        if not self._route_check_at or now < self._route_check_at:
            return
        self._route_check_at = 0.0
        for conn in list(self.relays.values()):
            route = d.route(conn.key)
            if conn.client_open and (route is None or route.node != conn.node.name):
                conn.gateway_cut()
                self.world.count("relays cut by the route check")

    # ------------------------------------------------------------------ control endpoint

    def session_opened(self, sess: ControlSession) -> None:
        self.open[sess.id] = sess

    def session_lost(self, sess: ControlSession) -> None:
        self.open.pop(sess.id, None)
        if self.sessions.get(sess.node) is sess:
            del self.sessions[sess.node]

    def on_ctl(self, sess: ControlSession, raw: bytes) -> None:
        if not self.up or sess.id not in self.open:
            return
        core = self.core
        assert core is not None
        try:
            msg = cp.decode(raw)
        except ProtocolError as exc:
            sess.to_node(cp.ControlError(str(exc)))
            return
        self.log(f"<- {sess.node} {describe(msg)}")
        now = self.world.sched.now
        if isinstance(msg, cp.Register):
            old = self.sessions.get(sess.node)
            self.sessions[sess.node] = sess
            accepted, effects = core.register(now, msg)
            if not accepted:
                if old is not None:
                    self.sessions[sess.node] = old
                else:
                    del self.sessions[sess.node]
                sess.to_node(cp.Refused(core.refusal(msg)))
                self.world.count("registrations refused")
                self.world.sched.after(0.001, self._close, sess, "refused")
                return
            sess.registered = True
            self.apply(effects)
            if old is not None and old is not sess:
                self._close(old, "replaced")
        elif not sess.registered:
            sess.to_node(cp.ControlError("register first"))
        elif isinstance(msg, cp.Report | cp.Released | cp.Leave):
            if self.sessions.get(sess.node) is not sess:
                sess.to_node(cp.ControlError("this session was replaced by a newer one"))
                return
            self.apply(core.received(now, sess.node, msg))
        else:
            sess.to_node(cp.ControlError(f"{type(msg).__name__} is not sent by backends"))

    def _close(self, sess: ControlSession, why: str) -> None:
        self.open.pop(sess.id, None)
        sess.drop(why)

    # ------------------------------------------------------------------ moves

    def force_move(self, key: str, as_key: bool) -> None:
        """An admin move (``POST /v1/move``) of ``key``'s slot, or of the key alone."""
        if not self.up:
            return
        core = self.core
        assert core is not None
        d = core.dir
        unit = ("key", key) if as_key else d.table.unit_of(key)
        src = d.owner_of(unit)
        live = [n.id for n in d.live() if n.id != src]
        if src is None or not live or src in core.in_flight():
            return
        dst = live[self.world.rng.randrange(len(live))]
        if dst in core.in_flight():
            return
        self.log(f"forced move of {unit} {src} -> {dst}")
        _, effects = core.start_move(
            self.world.sched.now, src, [Move(unit, src, dst, 0.0)], "manual"
        )
        self.apply(effects)

    # ------------------------------------------------------------------ upgrades

    def upgrade(self, client: ClientActor, att: int) -> None:
        """A client's upgrade reached the gateway."""
        if self.up:
            self.upgrading[(client.name, att)] = client
        self._route(client, att, 0)

    def _route(self, client: ClientActor, att: int, rerouted: int) -> None:
        w = self.world
        if not self.up or not client.waiting(att):
            self.upgrading.pop((client.name, att), None)
            return
        core = self.core
        assert core is not None
        lat = w.net.latency()
        if core.state.shedding:
            w.sched.after(lat, client.refused, att, 503, 2)
            return
        d = core.dir
        route = d.route(client.key)
        addr = d.address(route.node) if route is not None else None
        if route is None or addr is None:
            w.sched.after(lat, client.refused, att, 503, 1)
            return
        backend = w.backends[route.node]
        if not backend.up:
            w.sched.after(lat, client.refused, att, 503, d.retry_after(route.node))
            return
        if w.net.partitioned(backend.name, PLANE):
            later = CONNECT_TIMEOUT_S + lat
            w.sched.after(later, self._unreachable, client, att, route.node)
            return
        incs = self.incs
        timeout = w.sched.after(HANDSHAKE_TIMEOUT_S, self._no_answer, client, att, incs)

        def answer(status: int, conn: DataConn | None) -> None:
            w.sched.after(
                w.net.latency(), self._answered, client, att, incs, rerouted, timeout, status, conn
            )

        w.sched.after(lat, backend.upgrade, client, att, route.epoch, answer)

    def _unreachable(self, client: ClientActor, att: int, node: str) -> None:
        if self.up and client.waiting(att):
            assert self.core is not None
            self.world.sched.after(
                self.world.net.latency(), client.refused, att, 503, self.core.dir.retry_after(node)
            )

    def _no_answer(self, client: ClientActor, att: int, incs: int) -> None:
        if self.up and incs == self.incs and client.waiting(att):
            client.refused(att, 504, None)

    def _answered(
        self,
        client: ClientActor,
        att: int,
        incs: int,
        rerouted: int,
        timeout: Timer,
        status: int,
        conn: DataConn | None,
    ) -> None:
        w = self.world
        alive = self.up and incs == self.incs and client.waiting(att)
        if conn is not None and not alive:
            conn.break_("reset")  # nobody waits for it any more
            return
        if not alive:
            return
        timeout.cancel()
        if status == 421:
            self.world.count("upgrades answered 421")
            if rerouted < REROUTE_RETRIES:
                w.sched.after(0.05 * 2**rerouted, self._route, client, att, rerouted + 1)
            else:
                w.sched.after(w.net.latency(), client.refused, att, 503, 1)
            return
        assert conn is not None
        self.relays[conn.id] = conn
        w.sched.after(w.net.latency(), client.upgraded, att, conn)
