"""The node's side of the control protocol, sans-I/O: what to send, and the lease.

:class:`ControlAgent` turns control messages from the plane into calls on the
:class:`~backend.node.Node` and says what to answer; it decides when a report
is due and keeps the node's lease. The asyncio shell
(:mod:`backend.control_client`) and the simulator both drive it.

**The lease.** Each report carries a sequence number; the plane answers
``Granted(seq, lease_ms)``. The node's lease then runs until the moment the
report was *sent* plus ``lease_ms`` minus a safety margin. The plane counts its
side of the lease from when it *received* the report, which is later, so the
node always stops serving before the plane gives its units away. Stopping
(:meth:`Node.lease_lost`: write what it holds, drop its keys) needs the node to
*notice*: the tick does every 0.1 s while a control session is up, the node's
housekeeping every second between sessions. So the margin is never shorter than
``LEASE_CHECK_S``, or a node cut off from the plane would write its keys after
their new owner had taken them (and lose what it held in memory).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import assert_never

import structlog

from backend.load import LoadMeter
from backend.node import Node
from backend.store import StoreError
from clientlib.kernel import control_protocol as cp

__all__ = ["LEASE_CHECK_S", "ControlAgent"]

#: The longest a node may take to notice its lease ran out (its housekeeping runs every
#: second when no control session ticks), plus time to act on it.
LEASE_CHECK_S = 1.1

log = structlog.get_logger("backend.control")


class ControlAgent:
    def __init__(
        self,
        node: Node,
        meter: LoadMeter,
        *,
        advertise: tuple[str, int],
        report_interval: float = 1.0,
        lease_margin: float = 0.2,
        incarnation: str | None = None,
        probe: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0),
    ):
        self.node = node
        self.meter = meter
        self.advertise = advertise
        self.report_interval = report_interval
        self.lease_margin = lease_margin  # fraction of the lease given up for safety
        self.incarnation = incarnation or secrets.token_hex(8)
        self.probe = probe  # () -> (loop lag ms, busy fraction)
        self.registered = False
        self.leaving = False
        self.left = False
        self.refused: str | None = None
        self._seq = 0
        self._sent: OrderedDict[int, float] = OrderedDict()  # report seq → when it was sent
        self._next_report = 0.0
        node.join_control_plane()

    # ------------------------------------------------------------------ session

    def connected(self, now: float) -> list[cp.ControlMessage]:
        """A new control session: register. The lease of the last one still runs."""
        self.registered = False
        self.refused = None
        self._sent.clear()
        self._sent[0] = now
        try:
            max_epoch = max(self.node.store.max_epoch(), self.node.max_epoch_seen)
        except StoreError:
            max_epoch = self.node.max_epoch_seen
        return [
            cp.Register(
                self.node.node_id,
                self.incarnation,
                self.advertise,
                self.meter.estimate(),
                self.node.owned_units(),
                max_epoch,
            )
        ]

    def received(self, now: float, msg: cp.ControlMessage) -> list[cp.ControlMessage]:
        """Carry out one message from the plane; returns the answers to send."""
        node = self.node
        match msg:
            case cp.Granted(seq, lease_ms):
                sent = self._sent.get(seq)
                if sent is not None:
                    lease_s = lease_ms / 1000
                    margin = max(lease_s * self.lease_margin, LEASE_CHECK_S)
                    node.grant_lease(sent + lease_s - margin)
                    self.registered = True
                    self.refused = None
                    while self._sent and next(iter(self._sent)) <= seq:
                        self._sent.popitem(last=False)
            case cp.TableUpdate(table):
                node.set_view(table)
            case cp.Release(move, epoch, targets, version):
                if version and (node.view is None or node.view.version < version):
                    # Our table is older than the move's: a key with a unit of its own
                    # that we do not know of would be handed off with its slot. No answer:
                    # the plane sends the table, then the release, again.
                    log.warning("release_deferred", move=move, table_behind=version)
                    return []
                flushed, error = node.release(epoch, list(targets))
                log.info("release", move=move, units=len(targets), flushed=flushed, error=error)
                return [cp.Released(move, flushed, error)]
            case cp.Left():
                self.left = True
            case cp.Refused(reason):
                self.refused = reason
                log.error("registration_refused", reason=reason)
            case cp.ControlError(error):
                log.error("control_error", error=error)
                if not self.registered:
                    # Our registration never arrived (the plane answers a report before
                    # it with an error, and would forever): register again.
                    return self.connected(now)
            case cp.Register() | cp.Report() | cp.Released() | cp.Leave():
                log.error("control_message_refused", error=f"{type(msg).__name__} is for the plane")
            case _:
                assert_never(msg)
        return []

    def tick(self, now: float) -> list[cp.ControlMessage]:
        """Called often (every 100 ms or so): the lease check, and a report when due."""
        node = self.node
        if node.keys and now >= node.lease_until:
            node.lease_lost()
        if now < self._next_report or self.leaving:
            return []
        self._next_report = now + self.report_interval
        self._seq += 1
        self._sent[self._seq] = now
        while len(self._sent) > 64:  # answers that never came
            self._sent.popitem(last=False)
        lag, busy = self.probe()
        report = self.meter.report(now, sessions=node.session_count, loop_lag_ms=lag, busy=busy)
        version = node.view.version if node.view is not None else 0
        return [cp.Report(self._seq, report, version)]

    def leave(self) -> list[cp.ControlMessage]:
        self.leaving = True
        return [cp.Leave(self.node.node_id)]
