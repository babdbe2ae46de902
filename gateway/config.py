"""Gateway configuration: one validated object built at start (flags > env > TOML > defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clientlib.kernel.settings import ConfigError, parse_hostport


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    listen: str = "127.0.0.1:9000"
    admin_listen: str = "127.0.0.1:9090"
    admin_token: str | None = None  # required for admin write calls; reads too when set
    control_secret: str | None = None  # backends authenticate with it; None: control plane off
    static_backend: list[str] = field(default_factory=list)  # plain WebSocket servers
    path_prefix: str = "/"
    key_header: str = "X-Routing-Key"  # alternative to ?key=
    # False: an upgrade without a key is routed as the empty key (nginx `hash $arg_key`
    # does the same), for plain WebSocket servers whose clients send none.
    require_key: bool = True
    # auth
    jwt_secret: str | None = None  # when set, every upgrade needs a valid token
    allowed_origins: list[str] = field(default_factory=list)  # empty: any origin
    # TLS termination
    tls_cert: str | None = None
    tls_key: str | None = None
    # limits
    max_handshake_bytes: int = 16384
    handshake_timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    max_frame_bytes: int = 1 << 20
    write_high_water: int = 64 * 1024
    slow_consumer_s: float = 10.0  # a client whose buffer stays full this long is cut off
    idle_timeout_s: float = 300.0
    max_connections: int = 0  # 0: derived from the descriptor limit
    max_conns_per_ip: int = 0  # 0: no per-address limit; above it: 429
    reroute_retries: int = 3
    # drain
    drain_window_s: float = 5.0
    drain_deadline_s: float = 15.0
    # control plane
    state_dir: str = ".state/gateway"
    lease_s: float = 3.0
    rebalance: bool = True
    log_level: str = "info"

    def __post_init__(self) -> None:
        parse_hostport(self.listen, "listen")
        parse_hostport(self.admin_listen, "admin_listen")
        for b in self.static_backend:
            parse_hostport(b, "static_backend")
        if self.static_backend and self.control_secret:
            raise ConfigError("config: static_backend and control_secret exclude each other")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("config: tls_cert and tls_key go together")
        if not self.path_prefix.startswith("/"):
            raise ConfigError("config: path_prefix must start with /")
        for name in ("max_handshake_bytes", "max_frame_bytes", "write_high_water"):
            if getattr(self, name) < 1024:
                raise ConfigError(f"config: {name} must be at least 1024")
        for name in (
            "handshake_timeout_s",
            "connect_timeout_s",
            "slow_consumer_s",
            "idle_timeout_s",
            "drain_window_s",
            "drain_deadline_s",
            "lease_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config: {name} must be > 0")
        if self.max_connections < 0 or self.reroute_retries < 0 or self.max_conns_per_ip < 0:
            raise ConfigError(
                "config: max_connections, max_conns_per_ip and reroute_retries must be >= 0"
            )
