"""The embedded directory: membership, leases, the slot table, epochs, moves in flight.

It implements the data plane's :class:`~gateway.route_source.RouteSource`, and
keeps its state on disk so a gateway restart moves nothing: nodes known before
the restart keep their slots and get a grace lease to re-register, and a move
that was in flight is found and finished.

**Durability.** Every change is written before anyone hears of it: the caller
saves, then sends. A save writes a temporary file, fsyncs it, renames it over
the old one and fsyncs the directory, so a crash leaves the old state or the
new one, never a torn file. The epoch counter is part of that state, so an epoch
handed out is never handed out again; and it never falls below what the nodes
report they have seen in the state store (``observe_epoch``), so even a lost
state directory cannot make it go back.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from clientlib.kernel.control_protocol import LoadReport
from clientlib.kernel.routing import NUM_SLOTS, Route, SlotTable, Unit
from gateway.controlplane.moves import MoveRecord
from gateway.controlplane.planner import NodeLoad

__all__ = [
    "EmbeddedDirectory",
    "FileStorage",
    "MemoryStorage",
    "NodeEntry",
    "Storage",
]

log = structlog.get_logger("gateway.directory")


@dataclass(slots=True)
class NodeEntry:
    id: str
    addr: tuple[str, int]
    capacity: float
    lease_until: float
    alive: bool = True
    leaving: bool = False
    load: LoadReport | None = None  # the latest report, checked when it arrived
    registered: bool = False  # registered since this gateway started
    incarnation: str = ""  # the process holding the lease

    def to_load(self) -> NodeLoad:
        """The planner's view of this node (no load yet: an idle node)."""
        ld = self.load
        if ld is None:
            return NodeLoad(node=self.id, capacity=self.capacity, rate=0.0)
        # The node's own estimate of its capacity (measured, capped by its configuration)
        # once it reports; the figure it registered with until then.
        return NodeLoad(
            node=self.id,
            capacity=ld.capacity,
            rate=ld.rate,
            pressure=ld.pressure,
            slots=ld.slots,
            hot_keys=ld.hot_keys,
        )


class Storage(Protocol):
    """Where the directory's state lives between processes."""

    def read(self) -> bytes | None: ...

    def write(self, data: bytes) -> None:
        """Replace the state durably: after it returns, a crash keeps ``data``."""


class FileStorage:
    """A file, replaced atomically and durably (write, fsync, rename, fsync the folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class MemoryStorage:
    """State kept in memory: it outlives an EmbeddedDirectory (the simulator's disk)."""

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.writes = 0

    def read(self) -> bytes | None:
        return self.data

    def write(self, data: bytes) -> None:
        self.data = data
        self.writes += 1


class EmbeddedDirectory:
    def __init__(
        self,
        storage: Storage | str | Path,
        *,
        lease_s: float = 3.0,
        num_slots: int = NUM_SLOTS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if isinstance(storage, str | Path):
            storage = FileStorage(Path(storage) / "directory.json")
        self.storage = storage
        self.lease_s = lease_s
        self.clock = clock
        self.nodes: dict[str, NodeEntry] = {}
        self.table = SlotTable.empty(num_slots)
        self.epoch = 0  # global counter: every ownership change takes the next value
        self.moves: dict[int, MoveRecord] = {}  # moves in flight
        self.last_move_id = 0
        self._load()

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        try:
            raw = self.storage.read()
            if raw is None:
                return
            obj = orjson.loads(raw)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"directory state is unreadable: {exc}") from exc
        self.table = SlotTable.from_json(obj["table"])
        self.epoch = max(int(obj["epoch"]), self.table.max_epoch())
        self.last_move_id = int(obj.get("last_move_id", 0))
        for m in obj.get("moves", []):
            rec = MoveRecord.from_json(m)
            self.moves[rec.id] = rec
        grace = self.clock() + 3 * self.lease_s
        for n in obj.get("nodes", []):
            self.nodes[n["id"]] = NodeEntry(
                n["id"], (n["host"], int(n["port"])), float(n["capacity"]), grace
            )
        log.info(
            "directory_restored", nodes=len(self.nodes), epoch=self.epoch, moves=len(self.moves)
        )

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "epoch": self.epoch,
                "last_move_id": self.last_move_id,
                "table": self.table.to_json(),
                "nodes": [
                    {"id": n.id, "host": n.addr[0], "port": n.addr[1], "capacity": n.capacity}
                    for n in self.nodes.values()
                    if n.alive
                ],
                "moves": [m.to_json() for m in self.moves.values()],
            }
        )

    def save(self) -> None:
        """Write the state durably (see the module doc)."""
        self.storage.write(self.snapshot())

    # ------------------------------------------------------------------ RouteSource

    def route(self, key: str) -> Route | None:
        return self.table.route(key)

    def address(self, node: str) -> tuple[str, int] | None:
        n = self.nodes.get(node)
        return n.addr if n is not None and n.alive else None

    def fallback(self, key: str, exclude: set[str]) -> str | None:
        return None  # the owner is authoritative: another node would only answer 421

    def retry_after(self, node: str) -> int | None:
        n = self.nodes.get(node)
        left = n.lease_until - self.clock() if n is not None and n.alive else 0.0
        return max(1, math.ceil(left + 0.5))  # + half a tick for the reassignment

    def version(self) -> int:
        return self.table.version

    def view(self) -> dict[str, Any]:
        counts: dict[str | None, int] = {}
        for o in self.table.owners:
            counts[o] = counts.get(o, 0) + 1
        now = self.clock()
        return {
            "mode": "control-plane",
            "epoch": self.epoch,
            "nodes": [
                {
                    "id": n.id,
                    "address": f"{n.addr[0]}:{n.addr[1]}",
                    "alive": n.alive,
                    "leaving": n.leaving,
                    "capacity": n.capacity,
                    "slots": counts.get(n.id, 0),
                    "lease_left_s": round(n.lease_until - now, 2),
                    "load": n.load.to_json() if n.load is not None else {},
                }
                for n in self.nodes.values()
            ],
        }

    # ------------------------------------------------------------------ membership

    def holder_elsewhere(self, node: str, incarnation: str) -> NodeEntry | None:
        """The live entry of ``node`` held by another process, if any."""
        e = self.nodes.get(node)
        if (
            e is not None
            and e.alive
            and e.registered
            and e.incarnation != incarnation
            and e.lease_until >= self.clock()
        ):
            return e
        return None

    def register(
        self, node: str, addr: tuple[str, int], capacity: float, incarnation: str = ""
    ) -> NodeEntry:
        """(Re-)register a node; the caller saves."""
        e = self.nodes.get(node)
        now = self.clock()
        if e is None or not e.alive:
            e = NodeEntry(node, addr, capacity, now + self.lease_s)
            self.nodes[node] = e
        e.addr, e.capacity, e.alive, e.leaving = addr, capacity, True, False
        e.lease_until = now + self.lease_s
        e.registered = True
        e.incarnation = incarnation
        return e

    def observe_epoch(self, epoch: int) -> None:
        """A node has seen ``epoch`` in the store: never hand out one at or below it."""
        if epoch > self.epoch:
            log.info("epoch_raised", was=self.epoch, to=epoch)
            self.epoch = epoch

    def renew(self, node: str, load: LoadReport | None = None) -> None:
        e = self.nodes.get(node)
        if e is not None and e.alive:
            e.lease_until = self.clock() + self.lease_s
            if load is not None:
                e.load = load

    def live(self) -> list[NodeEntry]:
        return [n for n in self.nodes.values() if n.alive and not n.leaving]

    def expire(self) -> list[str]:
        """Mark nodes whose lease ran out as dead; returns their ids."""
        now = self.clock()
        dead = [n for n in self.nodes.values() if n.alive and n.lease_until < now]
        for n in dead:
            n.alive = False
            n.load = None
        return [n.id for n in dead]

    # ------------------------------------------------------------------ ownership

    def next_epoch(self) -> int:
        """The next epoch; the caller saves before anyone hears of it."""
        self.epoch += 1
        return self.epoch

    def next_move_id(self) -> int:
        self.last_move_id += 1
        return self.last_move_id

    def owner_of(self, unit: Unit) -> str | None:
        return self.table.holder(unit)[0]

    def assign(self, unit: Unit, node: str, epoch: int) -> None:
        self.table.assign(unit, node, epoch)

    def units_owned_by(self, node: str) -> list[Unit]:
        units: list[Unit] = [("slot", s) for s in self.table.slots_of(node)]
        units += [("key", k) for k, (n, _) in self.table.overrides.items() if n == node]
        return units

    def spread(self, units: list[Unit], targets: list[str]) -> dict[str, list[Unit]]:
        """Assign units over ``targets``, least loaded first, at new epochs. Saves once."""
        if not targets:
            return {}
        load = {t: self.nodes[t].to_load().util for t in targets}
        count = dict.fromkeys(targets, 0)
        for o in self.table.owners:
            if o in count:
                count[o] += 1
        out: dict[str, list[Unit]] = {t: [] for t in targets}
        for unit in units:
            # Even slot counts first (units carry unknown load), the less loaded on ties.
            t = min(targets, key=lambda n: (count[n], load[n]))
            count[t] += 1
            self.assign(unit, t, self.next_epoch())
            out[t].append(unit)
        self.save()
        return out

    def orphaned(self) -> list[Unit]:
        """Units whose owner is gone (dead, left, or unknown since a restart): a node that
        died or left when no live node could take its units still holds them."""
        owners = set(self.table.owners) | {o for o, _ in self.table.overrides.values()}
        gone = {o for o in owners if o is not None and not self._alive(o)}
        if not gone:
            return []
        units: list[Unit] = [("slot", s) for s, o in enumerate(self.table.owners) if o in gone]
        units += [("key", k) for k, (o, _) in self.table.overrides.items() if o in gone]
        return units

    def _alive(self, node: str) -> bool:
        e = self.nodes.get(node)
        return e is not None and e.alive

    def assign_unowned(self) -> int:
        """Give slots nobody owns to the live nodes in proportion to the capacity each
        registered with (first start; equal capacities: round robin)."""
        live = sorted(self.live(), key=lambda n: n.id)
        free = [s for s, o in enumerate(self.table.owners) if o is None]
        if not live or not free:
            return 0
        given = dict.fromkeys((n.id for n in live), 0)
        for s in free:
            # The node furthest below its share once it takes one more (ties: by id).
            n = min(live, key=lambda n: (given[n.id] + 1) / max(n.capacity, 1e-9))
            given[n.id] += 1
            self.table.set_slot(s, n.id, self.next_epoch())
        self.save()
        return len(free)
