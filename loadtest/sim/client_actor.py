"""A client: the real :class:`~clientlib.kernel.client_session.ClientSession`, driven as
``clientlib/client/client.py`` drives it.

It connects through the gateway, sends ``hello``, applies the ``welcome``,
resends what was not acknowledged, acknowledges what it receives (after 32
messages or 50 ms), and reconnects as its close codes say (full-jitter
backoff, hints honoured; HTTP 503/429 honour ``Retry-After``). Its workload is
``total`` messages, sent at ``rate`` with at most ``window`` unacknowledged;
it is done when all of them are acknowledged. Every message it receives and
every acknowledgement is reported to the checker.

A crash loses the client's session (a new process starts a new one; what it
had not seen acknowledged is given up and sent again under new ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from clientlib.kernel.backoff import BackoffPolicy, reconnect_delay
from clientlib.kernel.client_session import NOTHING, ClientSession, Joined
from clientlib.kernel.session_protocol import (
    Action,
    CloseCode,
    CloseHint,
    ProtocolError,
    Welcome,
    close_action,
    decode,
    encode,
)
from loadtest.sim.conn import DataConn
from loadtest.sim.scheduler import Timer

if TYPE_CHECKING:
    from loadtest.sim.world import World

__all__ = ["ClientActor"]

POLICY = BackoffPolicy(base=0.25, cap=4.0)
CONNECT_TIMEOUT_S = 10.0
ACK_EVERY = 32
ACK_DELAY_S = 0.05
HEALED_RATE = 50.0  # messages/s once the faults heal


class ClientActor:
    def __init__(self, world: World, name: str, key: str, total: int, rate: float, window: int):
        self.world = world
        self.name = name
        self.key = key
        self.total = total
        self.rate = rate
        self.window = window
        self.incs = 0
        self.session = ClientSession()
        self.state = "idle"  # upgrading, hello, up, backoff, crashed, closed
        self.conn: DataConn | None = None
        self.att = 0
        self.attempt = 0
        self.connected_at = 0.0
        self.acked_mark = 0  # the outbox's acked mark already reported (this session)
        self.acked_total = 0  # messages acknowledged, over all sessions and incarnations
        self.pushed = 0  # messages queued by this incarnation's workload, plus acked before it
        self.sent_ids = 0
        self.done_at: float | None = None
        self.close_when_done = world.rng.random() < 0.5
        self._ack_timer: Timer | None = None
        self._timer: Timer | None = None

    def log(self, what: str) -> None:
        self.world.trace.log(self.world.sched.now, f"{self.name} {what}")

    # ------------------------------------------------------------------ workload

    def start(self) -> None:
        """The client process starts (the planned start, or a restart after a crash)."""
        if self.state != "idle":
            return  # it crashed before its planned start: it starts when restarted
        self.incs += 1
        self.connect()
        self._send_later()

    def _send_later(self) -> None:
        w = self.world
        # Once the faults heal, the rest of the work goes at full pace: what is measured
        # then is how soon the system serves the key again, not the workload's pace.
        rate = max(self.rate, HEALED_RATE) if w.healed else self.rate
        w.sched.after(w.rng.expovariate(rate), self._send_one, self.incs)

    def _send_one(self, inc: int) -> None:
        if inc != self.incs or self.state == "crashed" or self.pushed >= self.total:
            return
        out = self.session.outbox
        if len(out) < self.window and out.has_room(64):
            self.sent_ids += 1
            msgid = f"{self.name}.{self.incs}.{self.sent_ids}"
            field = "text" if self.world.scenario.app == "chat" else "n"
            out.push(orjson.dumps({field: msgid}))
            self.pushed += 1
            self._write()
        self._send_later()

    def _write(self) -> None:
        if self.state == "up" and self.conn is not None:
            for f in self.session.frames_due():
                self.conn.client_send(("frame", f))

    def _progress(self) -> None:
        s = self.session
        acked = s.outbox.acked
        if acked > self.acked_mark:
            assert s.sid is not None
            self.world.checker.client_acked(self.key, s.sid, acked, self.acked_mark)
            self.acked_total += acked - self.acked_mark
            self.acked_mark = acked
        if self.done_at is None and self.acked_total >= self.total:
            self.done_at = self.world.sched.now
            self.log("done")
            if self.close_when_done and self.conn is not None and self.state == "up":
                self.state = "closed"
                conn, self.conn = self.conn, None
                conn.client_send(("close", CloseCode.NORMAL, ""))
                conn.client_closed()

    # ------------------------------------------------------------------ connections

    def connect(self) -> None:
        if self.state in ("crashed", "closed"):
            return
        self.att += 1
        self.state = "upgrading"
        att = self.att
        w = self.world
        if w.net.partitioned(self.name, "plane") or not w.plane.up:
            delay = CONNECT_TIMEOUT_S if w.plane.up else w.net.latency()
            w.sched.after(delay, self.refused, att, None, None)
            return
        w.sched.after(w.net.latency(), w.plane.upgrade, self, att)
        w.sched.after(CONNECT_TIMEOUT_S, self.refused, att, None, None)

    def waiting(self, att: int) -> bool:
        return att == self.att and self.state == "upgrading"

    def refused(self, att: int, status: int | None, retry_after: int | None) -> None:
        """The upgrade failed: an HTTP status (with Retry-After), or no answer (None)."""
        if not self.waiting(att):
            return
        self.log(f"upgrade refused: {status} retry-after {retry_after}")
        self.world.count(f"upgrades refused {status or 'no answer'}")
        if status in (429, 503):
            after = retry_after * 1000 if retry_after is not None else None
            self._reconnect_later(Action.RETRY_AFTER, CloseHint(after_ms=after), 0.0)
        elif status is None or status in (502, 504) or status >= 500:
            self._reconnect_later(Action.RECONNECT, CloseHint(), 0.0)
        else:
            self.world.checker.fail("availability", f"{self.name} refused for good: {status}")

    def upgraded(self, att: int, conn: DataConn) -> None:
        if not self.waiting(att):
            conn.break_("reset")
            return
        self.conn = conn
        conn.client_open = True
        self.state = "hello"
        conn.client_send(("frame", encode(self.session.hello())))
        self.world.sched.after(CONNECT_TIMEOUT_S, self._welcome_timeout, conn)

    def _welcome_timeout(self, conn: DataConn) -> None:
        if self.conn is conn and self.state == "hello":
            self.log("no welcome in time")
            self.conn = None
            conn.client_send(("close", CloseCode.GOING_AWAY, ""))
            conn.client_closed()
            self._reconnect_later(Action.RECONNECT, CloseHint(), 0.0)

    def on_conn_item(self, conn: DataConn, item: tuple[Any, ...]) -> None:
        if conn is not self.conn:
            return
        if item[0] == "close":
            code, reason = int(item[1]), str(item[2])
            conn.client_send(("close", code, ""))  # the close handshake's echo
            conn.client_closed()
            self.conn = None
            self._closed(code, reason)
            return
        try:
            if self.state == "hello":
                self._welcome(item[1])
            else:
                self._receive(item[1])
        except ProtocolError as exc:
            self.world.checker.fail("protocol", f"{self.name} refused the server's input: {exc}")

    def _welcome(self, raw: bytes) -> None:
        w = decode(raw)
        if not isinstance(w, Welcome):
            raise ProtocolError("expected welcome")
        s = self.session
        joined, _ = s.welcome(w)
        self.log(f"welcome {w.sid} {joined.value} last={w.last}")
        self.world.count(f"welcomes {joined.value}")
        if joined is not Joined.RESUMED:
            self.acked_mark = 0  # a new session numbers from 1
        self.state = "up"
        self.connected_at = self.world.sched.now
        self._progress()
        self._write()

    def _receive(self, raw: bytes) -> None:
        s = self.session
        data, _ = s.receive(raw)
        if data is not NOTHING:
            assert s.sid is not None
            self.world.checker.delivered(self.key, s.sid, s.inbox.last, data)
            if s.unacked_received() >= ACK_EVERY:
                self._write()
            elif self._ack_timer is None:
                self._ack_timer = self.world.sched.after(ACK_DELAY_S, self._ack_now)
        self._progress()

    def _ack_now(self) -> None:
        self._ack_timer = None
        self._write()

    def conn_lost(self, conn: DataConn, code: int | None, reason: str) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self._closed(code, reason)

    def _closed(self, code: int | None, reason: str) -> None:
        if self.state in ("crashed", "closed"):
            return
        self.log(f"closed {code} {reason}")
        lived = self.world.sched.now - self.connected_at if self.state == "up" else 0.0
        action = close_action(code)
        if action is Action.STOP:
            self.world.checker.fail("availability", f"{self.name} told to stop: close {code}")
        self._reconnect_later(action, CloseHint.decode(reason), lived)

    def _reconnect_later(self, action: Action, hint: CloseHint, lived: float) -> None:
        self.state = "backoff"
        self.attempt = 0 if lived >= POLICY.stable_after else self.attempt + 1
        rand = self.world.rng.random()
        delay = reconnect_delay(POLICY, self.attempt - 1 if self.attempt else 0, action, hint, rand)
        assert delay is not None
        self.world.sched.after(delay, self._reconnect, self.att)

    def _reconnect(self, att: int) -> None:
        if att == self.att and self.state == "backoff":
            self.connect()

    # ------------------------------------------------------------------ faults

    def crash(self) -> None:
        if self.state in ("crashed", "closed") or self.incs == 0:
            return  # not running (yet, or any more)
        self.log("crashed")
        self.state = "crashed"
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.break_("client_lost")

    def restart(self) -> None:
        if self.state != "crashed":
            return
        self.session = ClientSession()
        self.acked_mark = 0
        self.pushed = self.acked_total  # what was not acknowledged is given up
        self.state = "idle"
        self.log("restarted")
        self.start()

    def cut(self, how: str) -> None:
        if self.conn is not None and self.state in ("hello", "up"):
            self.conn.break_(how)
