"""Backend configuration (flags > env BACKEND_* > TOML > defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.node import DURABILITY_MODES
from clientlib.kernel.settings import ConfigError, parse_hostport


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    app: str = "echo"
    listen: str = "127.0.0.1:9101"
    advertise: str | None = None  # address the gateway dials; default: listen
    node_id: str | None = None  # default: the listen address
    capacity: float = 1000.0  # messages/s this node can carry
    high_water: float = 0.85
    low_water: float = 0.70
    store: str = ".state/store.db"
    durability: str = "handoff"
    checkpoint_s: float = 5.0
    control: str | None = None  # ws://HOST:PORT/v1/control of the gateway
    control_secret: str | None = None
    replay_max_count: int = 1024
    replay_max_bytes: int = 1 << 20
    max_message: int = 1 << 20
    moved_window_ms: int = 5000
    reconnect_rate: int = 2000
    log_level: str = "info"

    def __post_init__(self) -> None:
        from backend.apps import APPS

        if self.app not in APPS:
            raise ConfigError(f"config: app: unknown app {self.app!r} (have {', '.join(APPS)})")
        parse_hostport(self.listen, "listen")
        if self.advertise:
            parse_hostport(self.advertise, "advertise")
        if self.durability not in DURABILITY_MODES:
            raise ConfigError(f"config: durability: expected one of {', '.join(DURABILITY_MODES)}")
        if self.capacity <= 0:
            raise ConfigError("config: capacity must be > 0 (messages/s)")
        if not 0 < self.low_water < self.high_water:
            raise ConfigError("config: need 0 < low_water < high_water")
        if self.control and not self.control_secret:
            raise ConfigError("config: control needs control_secret")
        if self.replay_max_count < 1 or self.replay_max_bytes < 1024:
            raise ConfigError("config: replay_max_count >= 1 and replay_max_bytes >= 1024")
