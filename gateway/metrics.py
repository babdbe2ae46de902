"""Prometheus metrics of one gateway (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = [
    "GatewayMetrics",
]


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.accepted = Counter("gateway_accepted", "TCP connections accepted", registry=r)
        self.upgraded = Counter("gateway_upgraded", "Upgrades relayed (101)", registry=r)
        self.rejected = Counter(
            "gateway_rejected", "Upgrades refused, by HTTP status", ["status"], registry=r
        )
        self.violations = Counter(
            "gateway_frame_violations", "Client frames refused, by close code", ["code"], registry=r
        )
        self.slow_consumers = Counter(
            "gateway_slow_consumers", "Clients cut off for not reading", registry=r
        )
        self.evicted = Counter(
            "gateway_handshakes_evicted",
            "Unfinished upgrades dropped to make room for new ones (also counted as 408)",
            registry=r,
        )
        self.admin_dropped = Counter(
            "gateway_admin_dropped",
            "Admin connections closed by the listener's bounds: evicted (to make room), "
            "refused (all busy), timeout (no request in time)",
            ["reason"],
            registry=r,
        )
        self.idle_closed = Counter("gateway_idle_closed", "Connections closed idle", registry=r)
        self.reroutes = Counter("gateway_reroutes", "Upgrades re-routed after 421", registry=r)
        self.backend_unreachable = Counter(
            "gateway_backend_unreachable", "Backend connect failures", registry=r
        )
        self.closed = Counter(
            "gateway_closed", "Relayed connections closed, by who closed", ["by"], registry=r
        )
        self.frames = Counter("gateway_frames", "Frames relayed, by direction", ["dir"], registry=r)
        self.bytes = Counter("gateway_bytes", "Bytes relayed, by direction", ["dir"], registry=r)
        self.routes_cut = Counter(
            "gateway_routes_cut", "Relays cut: their node no longer owns the key", registry=r
        )
        self.connections = Gauge("gateway_connections", "Open client connections", registry=r)
        self.admission_closed = Gauge(
            "gateway_admission_closed", "1 while new upgrades are shed", registry=r
        )
