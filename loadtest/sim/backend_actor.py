"""A backend process: the real :class:`~backend.node.Node` and
:class:`~backend.control_agent.ControlAgent`, driven as ``backend/server.py`` and
``backend/control_client.py`` drive them, over the simulated network.

Each start is a new **incarnation** (memory empty, the store kept). Everything
that reaches the process goes through :meth:`BackendActor.run`: it is dropped
if the incarnation it was meant for is gone, and held while the process is
stalled (a stall is a process that runs nothing; its sockets stay open, its
clock jumps when it wakes). After each step the connections it woke write
what they have due, as the server's writer tasks do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend.control_agent import ControlAgent
from backend.load import LoadMeter
from backend.node import Node, NotOwner
from clientlib.kernel import control_protocol as cp
from clientlib.kernel.backoff import BackoffPolicy, reconnect_delay
from clientlib.kernel.session_protocol import (
    Action,
    CloseCode,
    CloseHint,
    ProtocolError,
    Welcome,
    decode,
)
from loadtest.sim.conn import DataConn
from loadtest.sim.control_link import PLANE, ControlSession
from loadtest.sim.recorder import FaultyStore, Recorder

if TYPE_CHECKING:
    from loadtest.sim.client_actor import ClientActor
    from loadtest.sim.world import World

__all__ = ["BackendActor"]

TICK_S = 0.1  # the control client's tick
SWEEP_S = 1.0  # the node's housekeeping
LEAVE_TIMEOUT_S = 5.0
CONTROL_BACKOFF = BackoffPolicy(base=0.1, cap=2.0)
REFUSED_RETRY_S = 1.0
OPEN_TIMEOUT_S = 5.0


class BackendActor:
    def __init__(self, world: World, name: str):
        self.world = world
        self.name = name
        self.inc = ""
        self.incs = 0
        self.up = False
        self.stopping = False
        self.finished = False  # a stopping process has closed its sessions
        self.node: Node | None = None
        self.agent: ControlAgent | None = None
        self.conns: dict[int, DataConn] = {}
        self.ctl: ControlSession | None = None
        self.ctl_attempt = 0
        self.stalled_until = 0.0
        self.deferred: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
        self.deferred_timers: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []
        self._woken: dict[int, DataConn] = {}
        self._tallied: Node | None = None
        self.retired = False  # stopped for good (decommissioned): never started again

    def log(self, what: str) -> None:
        self.world.trace.log(self.world.sched.now, f"{self.inc or self.name} {what}")

    # ------------------------------------------------------------------ the process

    def start(self) -> None:
        w = self.world
        self.incs += 1
        self.inc = f"{self.name}/{self.incs}"
        self.up, self.stopping, self.finished = True, False, False
        self.stalled_until = 0.0
        self.deferred.clear()
        self.deferred_timers.clear()
        recorder = Recorder(w.scenario.app_class()(), w.checker, self.name, self.inc)
        meter = LoadMeter(w.scenario.capacity[self.name])
        store = FaultyStore(w.store, w.faults.store, w.checker, self.name, self.inc)
        self.node = Node(
            recorder, store, meter, w.scenario.backend_config(self.name), clock=w.sched.clock
        )
        self.node.new_sid = w.new_sid
        # Write-through's group commit, as the server's call_soon: a turn of its own, after
        # the events already due (a crash or a stall may come between).
        self.node.schedule_commit = lambda: self.timer(0.0, self._commit)
        recorder.node = self.node
        self.agent = ControlAgent(
            self.node, meter, advertise=(self.name, 9000), incarnation=self.inc
        )
        self.log("started")
        self.timer(SWEEP_S, self._sweep)
        self.timer(TICK_S, self._tick)
        self._connect_control()

    def crash(self) -> None:
        if not self.up:
            return
        self.log("crashed")
        self.world.checker.licence(self.inc)
        self._exit("node_gone")

    def tally(self) -> None:
        """Add this incarnation's node counters to the run's (once)."""
        node = self.node
        if node is not None and node is not self._tallied:
            self._tallied = node
            for k, v in node.stats.items():
                if v and k != "messages":
                    self.world.count(f"node {k}", v)

    def _exit(self, how: str) -> None:
        self.tally()
        self.up = False
        for conn in list(self.conns.values()):
            conn.break_(how)
        self.conns.clear()
        if self.ctl is not None:
            self.ctl.drop("process gone")
            self.ctl = None
        self.node = self.agent = None
        self._woken.clear()

    def stall(self, duration: float) -> None:
        if not self.up:
            return
        self.log(f"stalls for {duration:.2f}s")
        self.stalled_until = max(self.stalled_until, self.world.sched.now + duration)
        self.world.sched.at(self.stalled_until, self.wake, self.inc)

    def wake(self, inc: str) -> None:
        """The stall ends. As an asyncio loop does when it runs again, what arrived on its
        sockets is handled before the timers that fell due meanwhile."""
        if inc != self.inc or not self.up or self.world.sched.now < self.stalled_until:
            return
        self.log("wakes")
        held, self.deferred = self.deferred, []
        timers, self.deferred_timers = self.deferred_timers, []
        for i, fn, args in held:
            self.run(i, fn, *args)
        for i, fn, args in timers:
            self._fire(i, fn, args)

    def run(self, inc: str, fn: Callable[..., Any], *args: Any) -> None:
        """Carry out one event from the network in this process (see the module doc)."""
        if inc != self.inc or not self.up:
            return
        if self.world.sched.now < self.stalled_until:
            self.deferred.append((inc, fn, args))
            return
        fn(*args)
        self._flush()

    def timer(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn`` after ``delay`` in this incarnation (a timer of its event loop)."""
        self.world.sched.after(delay, self._fire, self.inc, fn, args)

    def _fire(self, inc: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if inc != self.inc or not self.up:
            return
        if self.world.sched.now < self.stalled_until:
            self.deferred_timers.append((inc, fn, args))
            return
        fn(*args)
        self._flush()

    def woken(self, conn: DataConn) -> None:
        self._woken[conn.id] = conn

    def _flush(self) -> None:
        while self._woken:
            cid = next(iter(self._woken))
            conn = self._woken.pop(cid)
            conn.flush()

    def _commit(self) -> None:
        if self.node is not None:
            self.node.commit()

    def _sweep(self) -> None:
        assert self.node is not None
        self.node.sweep(self.world.sched.now)
        self.timer(SWEEP_S, self._sweep)

    def _tick(self) -> None:
        assert self.agent is not None
        if self.ctl is not None and self.ctl.open:
            for m in self.agent.tick(self.world.sched.now):
                self.ctl.to_plane(m)
        self.timer(TICK_S, self._tick)

    # ------------------------------------------------------------------ SIGTERM

    def sigterm(self) -> None:
        """``backend/__main__.py``'s graceful exit: stop, leave, close, exit."""
        if not self.up or self.stopping:
            return
        self.run(self.inc, self._sigterm)

    def _sigterm(self) -> None:
        assert self.node is not None and self.agent is not None
        self.log("SIGTERM")
        self.stopping = True
        self.node.stop()
        if self.ctl is None or not self.ctl.open:
            self._finish_stop(False)
            return
        for m in self.agent.leave():
            self.ctl.to_plane(m)
        self.timer(LEAVE_TIMEOUT_S, self._finish_stop, False)

    def _finish_stop(self, handed_off: bool) -> None:
        node = self.node
        if node is None or not self.stopping or self.finished or not self.up:
            return
        self.finished = True
        code = CloseCode.MOVED if handed_off else CloseCode.SERVICE_RESTART
        hint = CloseHint(window_ms=node.moved_window_ms(node.session_count)).encode()
        self.log(f"exits (handed off: {handed_off})")
        node.close_all(code, hint)
        for conn in self.conns.values():
            conn.sc.close(code, hint)  # the server closes every connection, sessions or not
            self.woken(conn)
        self._flush()
        self.world.sched.after(0.05, self._exit_after_stop, self.inc)

    def _exit_after_stop(self, inc: str) -> None:
        if inc == self.inc and self.up:
            self._exit("node_gone")

    # ------------------------------------------------------------------ control session

    def _connect_control(self) -> None:
        if not self.up or self.agent is None or self.agent.leaving:
            return
        w = self.world
        inc = self.inc
        if not w.plane.up:
            w.sched.after(w.net.latency(), self.run, inc, self._control_failed)
        elif w.net.partitioned(self.name, PLANE):
            w.sched.after(OPEN_TIMEOUT_S, self.run, inc, self._control_failed)
        else:
            w.sched.after(2 * w.net.latency(), self.run, inc, self._control_open)

    def _control_failed(self) -> None:
        assert self.agent is not None
        w = self.world
        delay = reconnect_delay(
            CONTROL_BACKOFF, self.ctl_attempt, Action.RECONNECT, CloseHint(), w.rng.random()
        )
        self.ctl_attempt += 1
        if self.agent.refused is not None:
            delay = REFUSED_RETRY_S  # another process holds our id: wait for its lease
        if self.agent.leaving:
            self._finish_stop(True)  # as the control client does: its leave() returns
            return
        self.timer(delay or 0.1, self._connect_control)

    def _control_open(self) -> None:
        w = self.world
        if not w.plane.up or w.net.partitioned(self.name, PLANE):
            self._control_failed()
            return
        assert self.agent is not None
        w.ctl_ids += 1
        self.ctl = ControlSession(w, w.ctl_ids, self)
        self.ctl_attempt = 0
        w.plane.session_opened(self.ctl)
        self.log(f"control session {self.ctl}")
        for m in self.agent.connected(w.sched.now):
            self.ctl.to_plane(m)

    def on_ctl(self, sess: ControlSession, raw: bytes) -> None:
        self.run(sess.inc, self._on_ctl, sess, raw)

    def _on_ctl(self, sess: ControlSession, raw: bytes) -> None:
        agent = self.agent
        if sess is not self.ctl or not sess.open or agent is None:
            return
        try:
            msg = self.world.decode_control(raw)
        except ProtocolError as exc:
            self.world.checker.fail("protocol", f"{self.name} got a bad control message: {exc}")
            return
        self.log(f"<- {describe(msg)}")
        for answer in agent.received(self.world.sched.now, msg):
            sess.to_plane(answer)
        if agent.left and agent.leaving and self.up:
            self._finish_stop(True)

    def ctl_lost(self, sess: ControlSession) -> None:
        self.run(sess.inc, self._ctl_lost, sess)

    def _ctl_lost(self, sess: ControlSession) -> None:
        if sess is not self.ctl:
            return
        self.ctl = None
        self._control_failed()

    # ------------------------------------------------------------------ data connections

    def upgrade(
        self, client: ClientActor, att: int, claimed: int, answer: Callable[..., None]
    ) -> None:
        """The gateway forwards an upgrade (route claim at ``claimed``): 101 or 421."""
        self.run(self.inc, self._upgrade, client, att, claimed, answer)

    def _upgrade(
        self, client: ClientActor, att: int, claimed: int, answer: Callable[..., None]
    ) -> None:
        node = self.node
        assert node is not None
        try:
            epoch = node.serving_epoch(client.key, claimed)
        except NotOwner as exc:
            self.log(f"421 {client.name} {client.key}: {exc}")
            answer(421, None)
            return
        w = self.world
        w.conn_ids += 1
        conn = DataConn(w.conn_ids, client, self, client.key, epoch)
        self.conns[conn.id] = conn
        self.log(f"101 {client.name} {client.key} at {epoch} on {conn}")
        answer(101, conn)

    def on_conn_item(self, conn: DataConn, item: tuple[Any, ...]) -> None:
        self.run(conn.inc, self._conn_item, conn, item)

    def _conn_item(self, conn: DataConn, item: tuple[Any, ...]) -> None:
        if not conn.node_open:
            return
        if item[0] == "close":
            conn.node_closed(int(item[1]))
            return
        sc = conn.sc
        hello = sc.session is None
        sc.receive(item[1])
        if hello and sc.session is not None and sc.welcome is not None:
            w = decode(sc.welcome)
            assert isinstance(w, Welcome)
            self.log(f"{conn} welcome {w.sid} resumed={w.resumed} last={w.last}")
            if w.resumed:
                self.world.checker.resumed(conn.key, w.sid, self.name)
        self.woken(conn)


def describe(msg: cp.ControlMessage) -> str:
    """A short trace line for a control message (tables by version only)."""
    match msg:
        case cp.TableUpdate(table):
            return f"TableUpdate(v{table.version})"
        case cp.Report(seq, _, version):
            return f"Report({seq}, v{version})"
        case cp.Register(node, inc, _, _, keys, max_epoch):
            return f"Register({node}, {inc}, keys={len(keys)}, max_epoch={max_epoch})"
        case cp.Release(move, epoch, targets):
            units = targets if len(targets) <= 3 else f"{len(targets)} units"
            return f"Release({move}, {epoch}, {units})"
    return repr(msg)
