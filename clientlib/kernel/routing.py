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

NUM_SLOTS = 4096


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

    def set_slot(self, slot: int, node: str | None, epoch: int) -> None:
        self.owners[slot] = node
        self.epochs[slot] = epoch
        self.version += 1

    def set_override(self, key: str, node: str, epoch: int) -> None:
        self.overrides[key] = (node, epoch)
        self.version += 1

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
    def from_json(cls, obj: dict[str, Any]) -> SlotTable:
        owners = list(obj["owners"])
        epochs = [int(e) for e in obj["epochs"]]
        if len(owners) != len(epochs) or not owners:
            raise ValueError("slot table: owners and epochs differ in length")
        ov = {str(k): (str(v[0]), int(v[1])) for k, v in obj.get("overrides", {}).items()}
        return cls(owners, epochs, ov, int(obj.get("version", 0)))


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
