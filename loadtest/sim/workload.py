"""A seed's scenario: the fleet, its settings, the keys and the clients. Pure.

Everything is drawn from the seed's generator, so a seed names one scenario:
two to four nodes with small capacities (so a hot key raises pressure and the
planner moves it), one to five keys with a hotspot (half the clients on the
first key), two to eight clients with their message counts, rates and windows,
and node settings that reach the less travelled paths (small replay buffers,
short session TTLs and idle times, frequent checkpoints).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from backend.app import App
from backend.apps.chat import ChatApp
from backend.apps.counter import CounterApp
from backend.config import BackendConfig
from gateway.controlplane.core import CoreConfig
from gateway.controlplane.planner import PlannerConfig

__all__ = ["ClientPlan", "Scenario"]

LEASE_S = 3.0
CHAOS_S = 20.0


@dataclass(frozen=True, slots=True)
class ClientPlan:
    name: str
    key: str
    total: int  # messages to have acknowledged
    rate: float  # messages/s
    window: int  # unacknowledged at most
    start: float  # seconds after the simulation starts


@dataclass(slots=True)
class Scenario:
    seed: int
    profile: str
    durability: str
    app: str
    nodes: list[str]
    capacity: dict[str, float]
    keys: list[str]
    clients: list[ClientPlan]
    replay_max_count: int
    session_ttl_s: float
    key_idle_s: float
    checkpoint_s: float
    rebalance: bool
    forced_moves_per_s: float
    lat_lo: float
    lat_hi: float
    lease_s: float = LEASE_S
    chaos_s: float = CHAOS_S
    detect_s: float = 4.0  # a data link's pings notice a dead path after this
    heartbeat_s: float = 7.5  # a control session's heartbeats notice a dead path after this
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def draw(cls, seed: int, profile: str, durability: str, rng: random.Random) -> Scenario:
        app = "chat" if rng.random() < 0.3 else "counter"
        n_nodes = rng.randint(2, 4)
        nodes = [f"n{i}" for i in range(1, n_nodes + 1)]
        capacity = {n: float(rng.choice((15, 30, 60, 200))) for n in nodes}
        keys = [
            f"{'room' if app == 'chat' else 'k'}:{seed % 97}:{i}" for i in range(rng.randint(1, 5))
        ]
        clients = []
        for i in range(rng.randint(2, 8)):
            key = keys[0] if rng.random() < 0.5 else rng.choice(keys)
            clients.append(
                ClientPlan(
                    f"c{i}",
                    key,
                    total=rng.randint(5, 50),
                    rate=rng.choice((2.0, 5.0, 10.0, 25.0)),
                    window=rng.choice((1, 4, 16, 64)),
                    start=rng.random() * 3.0,
                )
            )
        return cls(
            seed=seed,
            profile=profile,
            durability=durability,
            app=app,
            nodes=nodes,
            capacity=capacity,
            keys=keys,
            clients=clients,
            replay_max_count=rng.choice((1024, 1024, 32, 8)),
            session_ttl_s=rng.choice((120.0, 120.0, 6.0)),
            key_idle_s=rng.choice((30.0, 2.0)),
            checkpoint_s=rng.choice((1.0, 2.5)),
            rebalance=rng.random() < 0.8,
            forced_moves_per_s=rng.choice((0.0, 0.1, 0.3)),
            lat_lo=0.0005,
            lat_hi=rng.choice((0.002, 0.01, 0.05)),
        )

    def app_class(self) -> type[App]:
        return ChatApp if self.app == "chat" else CounterApp

    def backend_config(self, node: str) -> BackendConfig:
        return BackendConfig(
            app=self.app,
            node_id=node,
            control="ws://gateway/v1/control",
            credential="simulated",
            durability=self.durability,  # type: ignore[arg-type]
            capacity=self.capacity[node],
            replay_max_count=self.replay_max_count,
            session_ttl_s=self.session_ttl_s,
            key_idle_s=self.key_idle_s,
            checkpoint_s=self.checkpoint_s,
        )

    def core_config(self) -> CoreConfig:
        return CoreConfig(rebalance=self.rebalance)

    def planner_config(self) -> PlannerConfig:
        # Shorter than production so that twenty seconds see several rounds of moves.
        return PlannerConfig(cooldown_s=4.0, imbalance_period_s=2.0)

    def describe(self) -> str:
        cl = ", ".join(f"{c.name}:{c.key}x{c.total}@{c.rate:g}/w{c.window}" for c in self.clients)
        return (
            f"seed {self.seed} profile={self.profile} durability={self.durability} "
            f"app={self.app} nodes={self.nodes} capacity={list(self.capacity.values())} "
            f"replay={self.replay_max_count} ttl={self.session_ttl_s:g} idle={self.key_idle_s:g} "
            f"checkpoint={self.checkpoint_s:g} rebalance={self.rebalance} "
            f"forced={self.forced_moves_per_s:g}/s latency<={self.lat_hi:g}s clients=[{cl}]"
        )
