"""A loadtest scenario: TOML file or built-in name, with command-line overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from clientlib.kernel.settings import ConfigError, build_config


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
    flash_at: float | None = None
    flash_clients: int = 0
    kill_at: float | None = None  # SIGKILL the hotspot's node (or the first backend)
    rebalance: bool = True
    tolerance: float = 0.25  # "rebalanced" means max/mean below 1 + tolerance
    durability: str = "handoff"
    capacity: float | None = None  # per backend; None: derived so the hotspot overloads
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
            (self.message_bytes >= 0, "message_bytes must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"scenario: {msg}")
        if self.hotspot_at is not None and not 0 <= self.hotspot_at < self.duration:
            raise ConfigError("scenario: hotspot_at must fall inside the run")


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
