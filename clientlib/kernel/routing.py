"""Key → slot → node. Pure.

A key hashes to one of ``NUM_SLOTS`` slots with CRC-32 (any language has it),
and the :class:`SlotTable` maps each slot to a node with a per-slot epoch;
a per-key override (an isolated hot key) wins over its slot. This is
consistent hashing made explicit, as in Redis Cluster: a membership change
moves only the slots it must.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_KEY_LEN",
    "NUM_SLOTS",
    "Route",
    "SlotTable",
    "Unit",
    "fallback_routes",
    "rendezvous_owner",
    "slot_of",
    "static_table",
]

NUM_SLOTS = 4096
#: Routing keys are printable strings of 1..256 characters (any script: crc32 of UTF-8).
MAX_KEY_LEN = 256

#: What moves between nodes: a whole slot, or one key with its own assignment.
Unit = tuple[str, int | str]  # ("slot", 17) or ("key", "room:42")


def slot_of(key: str, num_slots: int = NUM_SLOTS) -> int:
    return zlib.crc32(key.encode()) % num_slots


@dataclass(frozen=True, slots=True)
class Route:
    node: str
    slot: int
    epoch: int
    override: bool = False


@dataclass(slots=True)
class SlotTable:
    """slot → (node, epoch), plus key overrides. ``version`` changes on every edit."""

    owners: list[str | None]
    epochs: list[int]
    overrides: dict[str, tuple[str, int]] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def empty(cls, num_slots: int = NUM_SLOTS) -> SlotTable:
        return cls([None] * num_slots, [0] * num_slots)

    @property
    def num_slots(self) -> int:
        return len(self.owners)

    def route(self, key: str) -> Route | None:
        slot = slot_of(key, len(self.owners))
        ov = self.overrides.get(key)
        if ov is not None:
            return Route(ov[0], slot, ov[1], override=True)
        node = self.owners[slot]
        if node is None:
            return None
        return Route(node, slot, self.epochs[slot])

    def unit_of(self, key: str) -> Unit:
        """The unit that moves ``key``: its own override if it has one, else its slot.

        Units are disjoint: a slot unit holds the slot's keys that have no override.
        """
        if key in self.overrides:
            return ("key", key)
        return ("slot", slot_of(key, len(self.owners)))

    def holder(self, unit: Unit) -> tuple[str | None, int]:
        """(owner, epoch) of a unit; a key without an override is held by its slot."""
        kind, u = unit
        if kind == "slot":
            return self.owners[int(u)], self.epochs[int(u)]
        ov = self.overrides.get(str(u))
        if ov is not None:
            return ov
        s = slot_of(str(u), len(self.owners))
        return self.owners[s], self.epochs[s]

    def max_epoch(self) -> int:
        return max([*self.epochs, *(e for _, e in self.overrides.values()), 0])

    def set_slot(self, slot: int, node: str | None, epoch: int) -> None:
        self.owners[slot] = node
        self.epochs[slot] = epoch
        self.version += 1

    def set_override(self, key: str, node: str, epoch: int) -> None:
        self.overrides[key] = (node, epoch)
        self.version += 1

    def assign(self, unit: Unit, node: str, epoch: int) -> None:
        kind, u = unit
        if kind == "slot":
            self.set_slot(int(u), node, epoch)
        else:
            self.set_override(str(u), node, epoch)

    def copy(self) -> SlotTable:
        return SlotTable(list(self.owners), list(self.epochs), dict(self.overrides), self.version)

    def slots_of(self, node: str) -> list[int]:
        return [s for s, n in enumerate(self.owners) if n == node]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "owners": self.owners,
            "epochs": self.epochs,
            "overrides": {k: list(v) for k, v in self.overrides.items()},
        }

    @classmethod
    def from_json(cls, obj: Any) -> SlotTable:
        """Parse and check a table; ValueError names what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("slot table must be an object")
        owners, epochs = obj.get("owners"), obj.get("epochs")
        if not isinstance(owners, list) or not isinstance(epochs, list):
            raise ValueError("slot table: owners and epochs must be lists")
        if len(owners) != len(epochs) or not 0 < len(owners) <= 65536:
            raise ValueError("slot table: owners and epochs differ in length")
        if not all(o is None or (isinstance(o, str) and o) for o in owners):
            raise ValueError("slot table: owners are node ids or null")
        if not all(type(e) is int and e >= 0 for e in epochs):
            raise ValueError("slot table: epochs are integers >= 0")
        raw = obj.get("overrides", {})
        if not isinstance(raw, dict):
            raise ValueError("slot table: overrides must be an object")
        ov: dict[str, tuple[str, int]] = {}
        for k, v in raw.items():
            if (
                not isinstance(v, list)
                or len(v) != 2
                or not isinstance(v[0], str)
                or type(v[1]) is not int
            ):
                raise ValueError("slot table: an override is [node, epoch]")
            ov[k] = (v[0], v[1])
        version = obj.get("version", 0)
        if type(version) is not int:
            raise ValueError("slot table: version must be an integer")
        return cls(owners, epochs, ov, version)


def rendezvous_owner(slot: int, nodes: Sequence[str]) -> str:
    """Highest-random-weight choice: stable, and a node change moves only its own slots."""
    return max(nodes, key=lambda n: hashlib.blake2b(f"{n}/{slot}".encode(), digest_size=8).digest())


def static_table(nodes: Iterable[str], num_slots: int = NUM_SLOTS) -> SlotTable:
    """A table for a fixed list of plain backends (like nginx ``hash $arg_key consistent``)."""
    names = sorted(set(nodes))
    if not names:
        raise ValueError("static table needs at least one node")
    return SlotTable([rendezvous_owner(s, names) for s in range(num_slots)], [0] * num_slots)


def fallback_routes(key: str, nodes: Sequence[str], exclude: Iterable[str]) -> list[str]:
    """Other nodes to try for ``key`` when its owner is unreachable, in a stable order."""
    skip = set(exclude)
    ranked = sorted(
        (n for n in nodes if n not in skip),
        key=lambda n: hashlib.blake2b(f"{n}/{key}".encode(), digest_size=8).digest(),
        reverse=True,
    )
    return ranked
