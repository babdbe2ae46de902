"""Gateway settings: one validated object built at start (flags > env GATEWAY_* > TOML > defaults).

Each field is one setting: its name is the TOML key, ``GATEWAY_<NAME>`` the
environment variable, ``--name-with-dashes`` the flag (see
:mod:`clientlib.kernel.settings`). ``docs/gateway.md`` lists them; a test keeps
the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from clientlib.kernel.etcd import parse_endpoints
from clientlib.kernel.etcd_layout import Layout
from clientlib.kernel.settings import ConfigError, parse_hostport, setting

__all__ = ["GatewayConfig"]


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    listen: str = setting("127.0.0.1:9000", "HOST:PORT for clients")
    workers: int = setting(
        1, "gateway processes sharing the listen port (SO_REUSEPORT); worker i's admin: port + i"
    )
    admin_listen: str = setting("127.0.0.1:9090", "HOST:PORT for the admin API and control")
    admin_token: str | None = setting(
        None, "bearer token for the admin API (none: a new one in state_dir/admin.token)"
    )
    admin_max_connections: int = setting(
        64, "admin connections besides control sockets; a new one closes the longest idle"
    )
    admin_timeout_s: float = setting(
        10.0, "an admin request head or body, or an idle admin connection: closed after this"
    )
    admin_tls_cert: str | None = setting(None, "PEM certificate: serve the admin port over TLS")
    admin_tls_key: str | None = setting(None, "PEM private key for admin_tls_cert")
    control_secret: str | None = setting(
        None, "enables the control plane; backends authenticate with it"
    )
    etcd: str | None = setting(
        None, "the directory in etcd (HOST:PORT,HOST:PORT,...): several gateways, one elected"
    )
    etcd_prefix: str = setting("/anchorage", "the cluster's keys in etcd start with this")
    election_lease_s: int = setting(
        2, "the leading gateway's etcd lease (whole seconds): a standby takes over within it"
    )
    etcd_ca_file: str | None = setting(
        None, "CA bundle: talk to etcd over https, verifying its members against it"
    )
    etcd_user: str | None = setting(None, "etcd user (etcd's authentication; none: off)")
    etcd_password: str | None = setting(
        None, "the etcd user's password; env or TOML only, never a flag", flag=False
    )
    gateway_id: str = setting("", "this gateway's name in the election (empty: admin_listen)")
    static_backend: list[str] = setting(
        default_factory=list,
        help="a plain WebSocket backend, hashed consistently by key",
        metavar="HOST:PORT",
    )
    path_prefix: str = setting("/", "upgrades outside this path prefix get 404")
    key_header: str = setting("X-Routing-Key", "header alternative to ?key=")
    # False: an upgrade without a key is routed as the empty key (nginx `hash $arg_key` does
    # the same), for plain WebSocket servers whose clients send none.
    require_key: bool = setting(True, "off: route upgrades without a key as the empty key")
    jwt_secret: str | None = setting(None, "require HS256 tokens signed with this secret")
    jwt_leeway_s: float = setting(0.0, "clock skew allowed on a token's exp and nbf")
    allowed_origins: list[str] = setting(
        default_factory=list, help="Origin allow-list (empty: any)", metavar="ORIGIN"
    )
    tls_cert: str | None = setting(None, "PEM certificate: terminate TLS")
    tls_key: str | None = setting(None, "PEM private key for tls_cert")
    backend_tls: bool = setting(False, "dial backends over TLS, verifying their certificates")
    backend_tls_ca: str | None = setting(None, "PEM CA bundle for backends (none: the system's)")
    backend_tls_server_name: str | None = setting(
        None, "name the backends' certificates carry (none: each backend's address)"
    )
    backend_tls_cert: str | None = setting(None, "PEM client certificate shown to backends")
    backend_tls_key: str | None = setting(None, "PEM private key for backend_tls_cert")
    max_handshake_bytes: int = setting(16384, "upgrade request head limit")
    handshake_timeout_s: float = setting(10.0, "an unfinished upgrade is dropped after this")
    connect_timeout_s: float = setting(3.0, "backend connect timeout")
    max_frame_bytes: int = setting(1 << 20, "client frame limit (close 1009)")
    write_high_water: int = setting(64 * 1024, "socket write buffer before the peer is paused")
    slow_consumer_s: float = setting(10.0, "a client whose buffer stays full this long: 4001")
    idle_timeout_s: float = setting(300.0, "nothing either way for this long: close 4004")
    control_frame_rate: float = setting(
        10.0, "pings and pongs per second a client may send on average (0: no limit); 1008"
    )
    control_frame_burst: int = setting(50, "pings and pongs a client may send at once")
    max_connections: int = setting(0, "0: derived from the descriptor limit; above it 503")
    max_conns_per_ip: int = setting(1024, "open connections per client address; 0: no limit")
    max_pending_per_ip: int = setting(32, "unfinished upgrades per client address; 0: no limit")
    max_pending_handshakes: int = setting(
        2048, "unfinished upgrades in all; above it the oldest is dropped; 0: no limit"
    )
    reroute_retries: int = setting(3, "re-routes after a backend's 421")
    drain_window_s: float = setting(5.0, "drain spreads its closes over this window")
    drain_deadline_s: float = setting(15.0, "drain exits at this deadline")
    state_dir: str = setting(
        ".state/gateway", "where the control plane keeps its table; the generated admin token"
    )
    lease_s: float = setting(3.0, "backend lease")
    rebalance: bool = setting(True, "move hot keys (off: static consistent hashing)")
    rebalance_tolerance: float = setting(
        0.2, "the rebalancer's tolerance: it acts when max/mean utilization passes 1 + this"
    )
    log_level: str = setting("info", "debug | info | warning | error")

    def __post_init__(self) -> None:
        _, port = parse_hostport(self.listen, "listen")
        _, admin_port = parse_hostport(self.admin_listen, "admin_listen")
        if self.workers < 1:
            raise ConfigError("config: workers must be >= 1")
        if not 0 < self.rebalance_tolerance < 1:
            raise ConfigError("config: rebalance_tolerance must be in (0, 1)")
        if self.workers > 1 and (port == 0 or admin_port == 0):
            raise ConfigError("config: workers > 1 need fixed ports for listen and admin_listen")
        for b in self.static_backend:
            parse_hostport(b, "static_backend")
        if self.static_backend and self.control_secret:
            raise ConfigError("config: static_backend and control_secret exclude each other")
        if self.etcd:
            try:
                parse_endpoints(self.etcd)
                Layout(self.etcd_prefix)
            except ValueError as exc:
                raise ConfigError(f"config: etcd: {exc}") from None
            if not self.control_secret:
                raise ConfigError(
                    "config: etcd needs control_secret (routes are signed with the nodes' "
                    "credentials, derived from it)"
                )
            if self.election_lease_s < 1:
                raise ConfigError("config: election_lease_s must be >= 1 (whole seconds)")
        if not self.gateway_id:
            object.__setattr__(self, "gateway_id", self.admin_listen)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("config: tls_cert and tls_key go together")
        if (self.backend_tls_cert is None) != (self.backend_tls_key is None):
            raise ConfigError("config: backend_tls_cert and backend_tls_key go together")
        backend_tls_set = (self.backend_tls_ca, self.backend_tls_cert, self.backend_tls_server_name)
        if not self.backend_tls and any(v is not None for v in backend_tls_set):
            raise ConfigError("config: backend_tls_* settings need backend_tls on")
        if (self.admin_tls_cert is None) != (self.admin_tls_key is None):
            raise ConfigError("config: admin_tls_cert and admin_tls_key go together")
        if self.admin_max_connections < 1:
            raise ConfigError("config: admin_max_connections must be >= 1")
        if not self.path_prefix.startswith("/"):
            raise ConfigError("config: path_prefix must start with /")
        for name in ("max_handshake_bytes", "max_frame_bytes", "write_high_water"):
            if getattr(self, name) < 1024:
                raise ConfigError(f"config: {name} must be at least 1024")
        for name in (
            "handshake_timeout_s",
            "admin_timeout_s",
            "connect_timeout_s",
            "slow_consumer_s",
            "idle_timeout_s",
            "drain_window_s",
            "drain_deadline_s",
            "lease_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config: {name} must be > 0")
        if self.control_frame_rate < 0 or self.control_frame_burst < 1:
            raise ConfigError("config: control_frame_rate must be >= 0, control_frame_burst >= 1")
        if self.jwt_leeway_s < 0:
            raise ConfigError("config: jwt_leeway_s must be >= 0")
        for name in (
            "max_connections",
            "max_conns_per_ip",
            "max_pending_per_ip",
            "max_pending_handshakes",
            "reroute_retries",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"config: {name} must be >= 0")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("config: log_level: expected debug, info, warning or error")
