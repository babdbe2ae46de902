"""Backend settings: one validated object (flags > env BACKEND_* > TOML > defaults).

The same object configures the server, the node and the control client: there
is no second copy to fall out of step. Each field is one setting: its name is
the TOML key, ``BACKEND_<NAME>`` the environment variable, ``--name-with-dashes``
the flag. ``docs/backend.md`` lists them; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clientlib.kernel.etcd import parse_endpoints
from clientlib.kernel.etcd_layout import Layout
from clientlib.kernel.settings import ConfigError, parse_hostport, setting

__all__ = ["DURABILITY_MODES", "BackendConfig", "Durability"]

Durability = Literal["handoff", "checkpoint", "write-through"]
DURABILITY_MODES: tuple[str, ...] = ("handoff", "checkpoint", "write-through")


@dataclass(frozen=True, kw_only=True)
class BackendConfig:
    app: str = setting("echo", "the app to run (a name from backend.apps)", flag=False)
    listen: str = setting("127.0.0.1:9101", "HOST:PORT to serve WebSockets on")
    advertise: str | None = setting(None, "HOST:PORT the gateway dials (default: listen)")
    node_id: str = setting("", "stable node name (empty: the advertised address)")
    capacity: float | None = setting(
        None,
        "messages/s the node carries: a cap on what it measures with service_time_us, "
        "else what it reports (none: measured from CPU time, 1000 until busy enough)",
    )
    service_time_us: float = setting(
        0.0,
        "finite capacity: each client message takes this long of one FIFO server "
        "(µs; 0: off, served at once)",
    )
    pressure_target_ms: float = setting(
        50.0, "time in system (p90) at which a node counts as fully loaded"
    )
    high_water: float = setting(0.85, "utilization that raises the pressure flag")
    low_water: float = setting(0.70, "utilization below which pressure clears")
    store: str = setting(
        ".state/store.db", "the state store: an SQLite file path, or redis://HOST:PORT/DB"
    )
    durability: Durability = setting("handoff", "handoff | checkpoint | write-through")
    checkpoint_s: float = setting(
        5.0,
        "checkpoint mode: changed keys are written this often; write-through: journals "
        "are compacted this often",
    )
    journal_max_bytes: int = setting(
        64 << 10,
        "write-through: a key's journal is compacted into its record once it would pass "
        "this many bytes and the record's size",
    )
    control: str | None = setting(None, "control endpoint, ws://HOST:PORT/v1/control")
    etcd: str | None = setting(
        None, "the directory in etcd (HOST:PORT,HOST:PORT,...) instead of a control endpoint"
    )
    etcd_prefix: str = setting("/anchorage", "the cluster's keys in etcd start with this")
    etcd_ca_file: str | None = setting(
        None, "CA bundle: talk to etcd over https, verifying its members against it"
    )
    etcd_user: str | None = setting(None, "etcd user (etcd's authentication; none: off)")
    etcd_password: str | None = setting(
        None, "the etcd user's password; env or TOML only, never a flag", flag=False
    )
    etcd_lease_s: int = setting(
        3,
        "this node's etcd lease (whole seconds): it stops serving within it when cut off from etcd",
    )
    credential: str | None = setting(
        None, "this node's credential (python -m gateway credential NODE_ID)", flag=False
    )
    direct: bool = setting(
        False, "serve upgrades no gateway vouched for (development only: any client, any key)"
    )
    tls_cert: str | None = setting(None, "PEM certificate: serve the gateway hop over TLS")
    tls_key: str | None = setting(None, "PEM private key for tls_cert")
    ca_file: str | None = setting(None, "CA bundle to verify a wss:// control endpoint")
    node_held_bytes: int = setting(64 << 20, "input held unprocessed, all connections together")
    replay_max_count: int = setting(1024, "replay buffer per session: messages")
    replay_max_bytes: int = setting(1 << 20, "replay buffer per session: bytes")
    max_message: int = setting(1 << 20, "largest client message (close 1009)")
    max_message_items: int = setting(
        65536, "most JSON values one message may hold (close 1009): bounds its decoded size"
    )
    session_ttl_s: float = setting(120.0, "a detached session is kept this long for a resume")
    key_idle_s: float = setting(30.0, "a key with no session is flushed and dropped after this")
    moved_window_ms: int = setting(5000, "longest window clients of a moved unit reconnect in")
    reconnect_rate: int = setting(2000, "reconnects/s a move may cause (sizes the window)")
    log_level: str = setting("info", "debug | info | warning | error")

    def __post_init__(self) -> None:
        from backend.apps import APPS

        if self.app not in APPS:
            raise ConfigError(f"config: app: unknown app {self.app!r} (have {', '.join(APPS)})")
        parse_hostport(self.listen, "listen")
        if self.advertise:
            parse_hostport(self.advertise, "advertise")
        if not self.node_id:
            # A node needs a stable name; the address it is reached at is one.
            object.__setattr__(self, "node_id", self.advertise or self.listen)
        if self.durability not in DURABILITY_MODES:
            raise ConfigError(f"config: durability: expected one of {', '.join(DURABILITY_MODES)}")
        if self.capacity is not None and self.capacity <= 0:
            raise ConfigError("config: capacity must be > 0 (messages/s)")
        if not 0 <= self.service_time_us <= 1e6:
            raise ConfigError("config: service_time_us must be in [0, 1000000]")
        if self.pressure_target_ms <= 0:
            raise ConfigError("config: pressure_target_ms must be > 0")
        if not 0 < self.low_water < self.high_water:
            raise ConfigError("config: need 0 < low_water < high_water")
        if self.control and self.etcd:
            raise ConfigError("config: control and etcd exclude each other (one directory)")
        if self.etcd:
            try:
                parse_endpoints(self.etcd)
                Layout(self.etcd_prefix)
            except ValueError as exc:
                raise ConfigError(f"config: etcd: {exc}") from None
            if "/" in self.node_id:
                raise ConfigError("config: node_id: no / in a node id with etcd")
            if self.etcd_lease_s < 2:
                raise ConfigError("config: etcd_lease_s must be >= 2 (whole seconds)")
        if (self.control or self.etcd) and not self.credential:
            raise ConfigError(
                f"config: {'control' if self.control else 'etcd'} needs this node's credential "
                "(BACKEND_CREDENTIAL; print it with: python -m gateway credential NODE_ID)"
            )
        if not self.control and not self.etcd and not self.direct:
            raise ConfigError(
                "config: without control or etcd, a backend serves clients directly: say "
                "--direct on (development only), or give --control (or --etcd) and the "
                "node's credential"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("config: tls_cert and tls_key go together")
        if self.node_held_bytes < self.max_message:
            raise ConfigError("config: node_held_bytes must be at least max_message")
        if self.journal_max_bytes < 1024:
            raise ConfigError("config: journal_max_bytes must be at least 1024")
        if self.replay_max_count < 1 or self.replay_max_bytes < 1024:
            raise ConfigError("config: replay_max_count >= 1 and replay_max_bytes >= 1024")
        for name in ("checkpoint_s", "session_ttl_s", "key_idle_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config: {name} must be > 0")
        if self.moved_window_ms < 100 or self.reconnect_rate < 1:
            raise ConfigError("config: moved_window_ms >= 100 and reconnect_rate >= 1")
        if self.max_message < 1024:
            raise ConfigError("config: max_message must be at least 1024")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("config: log_level: expected debug, info, warning or error")
