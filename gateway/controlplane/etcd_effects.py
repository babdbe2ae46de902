"""The leader's writes on etcd: the snapshot staged until written, the transactions that
write it (and the orders) only under this term's leadership, and what the core's
effects become as keys (pure).

The directory is put only if the leader key's create revision is this term's and
the directory's mod revision is the one this term last read or wrote; orders only
if the leader key is this term's. A refused write means another gateway leads,
or led since: the caller drops the effects and steps down.

``release`` → ``orders/<node>/release-<move>`` (the core repeats it until the node
answers; each put is an event the node sees); ``left`` and ``refused`` likewise;
a table update → nothing (the directory key *is* the broadcast); ``granted`` →
nothing (etcd keeps the leases); ``Disconnect`` → nothing (a node is gone when
its registration key is); a finished move → its order and answer keys deleted.
"""

from __future__ import annotations

import structlog

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.etcd import Compare, Delete, EtcdClient, EtcdError, Op, Put, Range
from clientlib.kernel.etcd_layout import Layout
from gateway.controlplane.core import Broadcast, Disconnect, Effect, MoveFinished, Send

__all__ = ["LeaderWrites", "StagedStorage", "effect_ops"]

log = structlog.get_logger("gateway.control")


class StagedStorage:
    """The core's :class:`~gateway.controlplane.directory.Storage` on the leader: ``write``
    keeps the latest snapshot until the shell has written it to etcd."""

    def __init__(self, data: bytes | None = None):
        self.data = data
        self.staged: bytes | None = None

    def read(self) -> bytes | None:
        return self.data

    def write(self, data: bytes) -> None:
        self.staged = data

    def take(self) -> bytes | None:
        data, self.staged = self.staged, None
        if data is not None:
            self.data = data
        return data


def effect_ops(
    effects: list[Effect], layout: Layout, orders: dict[int, str]
) -> tuple[list[Op], list[MoveFinished]]:
    """The writes that carry out ``effects``, and the moves that finished. ``orders``
    (move → the node its release went to) is kept up to date."""
    ops: list[Op] = []
    finished: list[MoveFinished] = []
    for e in effects:
        match e:
            case Send(node, cp.Release() as msg):
                orders[msg.move] = node
                ops.append(Put(layout.release(node, msg.move), cp.encode(msg)))
            case Send(node, cp.Left() as msg):
                ops.append(Put(layout.left(node), cp.encode(msg)))
            case Send(node, cp.Refused() as msg):
                ops.append(Put(layout.refused(node), cp.encode(msg)))
            case Send() | Broadcast() | Disconnect():
                pass
            case MoveFinished(move, _, _):
                src = orders.pop(move, None)
                if src is not None:
                    ops.append(Delete(layout.release(src, move)))
                    ops.append(Delete(layout.released(src, move)))
                finished.append(e)
    return ops, finished


class LeaderWrites:
    """One term's writes: ``leader_rev`` is its leader key's create revision, ``dir_rev``
    the directory's mod revision it last read or wrote."""

    def __init__(self, client: EtcdClient, layout: Layout, leader_rev: int, dir_rev: int):
        self.client, self.layout = client, layout
        self.leader_rev, self.dir_rev = leader_rev, dir_rev

    async def directory(self, data: bytes) -> bool:
        key, leader = self.layout.directory, self.layout.leader
        try:
            res = await self.client.txn(
                [Compare(leader, "CREATE", self.leader_rev), Compare(key, "MOD", self.dir_rev)],
                [Put(key, data)],
                [Range(leader), Range(key)],
            )
        except EtcdError as exc:
            log.error("directory_write_failed", error=str(exc)[:200])
            return False
        if res.succeeded:
            self.dir_rev = res.revision
            return True
        lead, cur = [*res.ranges, [], []][:2]
        if lead and lead[0].create_revision == self.leader_rev and cur and cur[0].value == data:
            self.dir_rev = cur[0].mod_revision  # a retried write of ours that had gone through
            return True
        log.warning("directory_write_refused", reason="not the leader any more")
        return False

    async def guarded(self, ops: list[Op]) -> bool:
        try:
            res = await self.client.txn(
                [Compare(self.layout.leader, "CREATE", self.leader_rev)], ops
            )
            return res.succeeded
        except EtcdError as exc:
            log.error("order_write_failed", error=str(exc)[:200])
            return False
