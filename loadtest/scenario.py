"""A loadtest scenario: TOML file or built-in name, with command-line overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from clientlib.kernel.settings import ConfigError, build_config

#: The steady state before a hotspot: at most this many seconds before its onset (the
#: start-up ramp, and the first rebalancing rounds after it, come earlier).
STEADY_S = 10.0


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str = "custom"
    description: str = ""
    backends: int = 3
    clients: int = 1000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # client processes
    duration: float = 60.0
    rate: float = 1.0  # messages/s per client, Poisson
    message_bytes: int = 64  # padding added to each message
    keys: int = 500  # cold key population
    zipf: float = 0.8
    ramp_per_s: float = 500.0  # new connections per second
    hotspot_at: float | None = 15.0
    hotspot_duration: float = 30.0
    hotspot_share: float = 0.4
    hotspot_keys: int = 4
    hotspot_same_node: bool = True
    # Hot-key clients' rate outside the hotspot, as a fraction of the base rate (0: silent;
    # their keys then carry no load the rebalancer could move before the onset).
    hotspot_quiet: float = 0.1
    flash_at: float | None = None
    flash_clients: int = 0
    kill_at: float | None = None  # SIGKILL the hotspot's node (or the first backend)
    rebalance: bool = True
    tolerance: float = 0.25  # "rebalanced" means max/mean below 1 + tolerance
    # The gateway's rebalance_tolerance (what its planner aims at; None: its default, 0.2).
    rebalance_tolerance: float | None = None
    durability: str = "handoff"
    capacity: float | None = None  # per backend; None: derived so the hotspot overloads
    # Finite capacity: each message takes this long of a x1 backend's server (µs; 0: no
    # service queue, and capacity is the configured figure above).
    service_time_us: float = 0.0
    # Backends' capacities relative to x1, comma-separated, one per backend ("1,0.5,2,1");
    # empty: all x1. A backend's service time is service_time_us divided by its own.
    capacities: str = ""
    drain_s: float = 10.0  # after the run, wait this long for outstanding replies
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("hotspot_at", "flash_at", "kill_at"):  # TOML has no null: < 0 means off
            v = getattr(self, name)
            if v is not None and v < 0:
                object.__setattr__(self, name, None)
        checks = [
            (self.backends >= 1, "backends must be >= 1"),
            (self.clients >= 1, "clients must be >= 1"),
            (1 <= self.workers <= 64, "workers must be 1..64"),
            (self.duration > 0, "duration must be > 0"),
            (self.rate > 0, "rate must be > 0"),
            (self.keys >= 1, "keys must be >= 1"),
            (self.zipf >= 0, "zipf must be >= 0"),
            (0 < self.hotspot_share < 1, "hotspot_share must be in (0, 1)"),
            (self.hotspot_keys >= 1, "hotspot_keys must be >= 1"),
            (0 < self.tolerance < 1, "tolerance must be in (0, 1)"),
            (0 <= self.hotspot_quiet <= 1, "hotspot_quiet must be in [0, 1]"),
            (
                self.rebalance_tolerance is None or 0 < self.rebalance_tolerance < 1,
                "rebalance_tolerance must be in (0, 1)",
            ),
            (self.message_bytes >= 0, "message_bytes must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"scenario: {msg}")
        if self.hotspot_at is not None and not 0 <= self.hotspot_at < self.duration:
            raise ConfigError("scenario: hotspot_at must fall inside the run")
        if not 0 <= self.service_time_us <= 1e6:
            raise ConfigError("scenario: service_time_us must be in [0, 1000000]")
        mults = self.multipliers()  # raises on a bad list
        if self.capacities and len(mults) != self.backends:
            raise ConfigError(
                f"scenario: capacities gives {len(mults)} figures for {self.backends} backends"
            )

    def multipliers(self) -> list[float]:
        """Each backend's capacity relative to x1."""
        if not self.capacities:
            return [1.0] * self.backends
        try:
            mults = [float(x) for x in self.capacities.split(",")]
        except ValueError:
            raise ConfigError(
                f"scenario: capacities: expected numbers like 1,0.5,2 (got {self.capacities!r})"
            ) from None
        if not all(0.1 <= m <= 10 for m in mults):
            raise ConfigError("scenario: capacities must each be in [0.1, 10]")
        return mults

    def service_times(self) -> dict[str, float]:
        """node name → service time (µs), when the backends have a service queue."""
        if self.service_time_us <= 0:
            return {}
        return {
            f"node-{i}": round(self.service_time_us / m, 1)
            for i, m in enumerate(self.multipliers(), 1)
        }

    @property
    def steady_from(self) -> float:
        """When the start-up ramp is over: connections made, rates settled."""
        return self.clients / self.ramp_per_s + 3.0

    def steady_window(self) -> tuple[float, float] | None:
        """The steady state a hotspot is judged against: the STEADY_S seconds before its
        onset, once the ramp is over (None: no hotspot, or no time for it)."""
        if self.hotspot_at is None:
            return None
        start = max(self.steady_from, self.hotspot_at - STEADY_S)
        return (start, self.hotspot_at) if start < self.hotspot_at else None

    def describe(self) -> str:
        """The scenario as it runs (flags applied)."""
        caps = ""
        if self.service_time_us > 0:
            per = 1e6 / self.service_time_us
            mults = self.multipliers()
            caps = (
                f" with service queues ({per:.0f} msg/s at x1"
                + (f"; x{','.join(f'{m:g}' for m in mults)}" if len(set(mults)) > 1 else "")
                + ")"
            )
        elif self.capacity:
            caps = f" of {self.capacity:g} msg/s"
        text = (
            f"{self.backends} backends{caps}, {self.clients} clients at {self.rate:g} msg/s "
            f"on {self.keys} keys (Zipf {self.zipf:g}), {self.duration:g} s"
        )
        if self.hotspot_at is not None:
            where = "one node" if self.hotspot_same_node else "any node"
            text += (
                f"; at {self.hotspot_at:g} s, {self.hotspot_share:.0%} of the traffic moves "
                f"onto {self.hotspot_keys} key{'s' if self.hotspot_keys > 1 else ''} of "
                f"{where} for {self.hotspot_duration:g} s"
            )
        if self.flash_at is not None and self.flash_clients:
            text += f"; at {self.flash_at:g} s, {self.flash_clients} clients join one key"
        if self.kill_at is not None:
            text += f"; at {self.kill_at:g} s, kill -9 of the hotspot's node"
        text += f"; rebalance {'on' if self.rebalance else 'off'}"
        if self.rebalance and self.rebalance_tolerance is not None:
            text += f" (tolerance {self.rebalance_tolerance:g})"
        return text


def builtin_names() -> list[str]:
    files = resources.files("loadtest") / "scenarios"
    return sorted(p.name.removesuffix(".toml") for p in files.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_file: str | None, overrides: dict[str, Any]) -> Scenario:
    path: Path | None = None
    if name_or_file:
        p = Path(name_or_file)
        if p.suffix == ".toml" or p.exists():
            path = p
        else:
            res = resources.files("loadtest") / "scenarios" / f"{name_or_file}.toml"
            if not res.is_file():
                raise ConfigError(
                    f"scenario: no scenario {name_or_file!r} "
                    f"(built-in: {', '.join(builtin_names())})"
                )
            path = Path(str(res))
    return build_config(Scenario, file=path, flags=overrides)
