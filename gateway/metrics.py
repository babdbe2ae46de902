"""Prometheus metrics of one gateway (its own registry, so tests can run several).

Nothing here runs per frame. Each connection's :class:`~gateway.frames.FrameTracker`
counts its frames and bytes; :class:`TrafficCounters` adds what the live
connections counted since its last call to the process counters, once a second
(the sweep) and at each scrape, so a gateway whose clients stay for hours
reports their traffic as it flows, not when they leave.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "GatewayMetrics",
    "TrafficCounters",
]

# Seconds: from a loopback hop (~100 µs) to a connect timeout.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


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
        self.frames = Counter(
            "gateway_frames",
            "Frames relayed, by direction (live connections included, published once a second)",
            ["dir"],
            registry=r,
        )
        self.bytes = Counter(
            "gateway_bytes",
            "Bytes relayed, by direction (live connections included, published once a second)",
            ["dir"],
            registry=r,
        )
        self.routes_cut = Counter(
            "gateway_routes_cut", "Relays cut: their node no longer owns the key", registry=r
        )
        self.connections = Gauge("gateway_connections", "Open client connections", registry=r)
        self.relaying = Gauge("gateway_relaying", "Connections relaying (after 101)", registry=r)
        self.admission_closed = Gauge(
            "gateway_admission_closed", "1 while new upgrades are shed", registry=r
        )
        self.upgrade_seconds = Histogram(
            "gateway_upgrade_seconds",
            "From a client's first upgrade byte to the 101 sent back",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_connect_seconds = Histogram(
            "gateway_backend_connect_seconds",
            "Opening a backend connection (TCP, and TLS with backend_tls)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.move_seconds = Histogram(
            "gateway_move_seconds",
            "Control plane: a move from its release order to its commit or abort, by outcome",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.route_reloads = Counter(
            "gateway_route_reloads",
            "Workers 1..N-1: re-reads of the control plane's state file, by result",
            ["result"],
            registry=r,
        )
        self.traffic = TrafficCounters(self)


class Tracked(Protocol):
    """What a connection shows the traffic counters: its two frame trackers' counts."""

    @property
    def c2b(self) -> _Counts: ...

    @property
    def b2c(self) -> _Counts: ...


class _Counts(Protocol):
    @property
    def frames(self) -> int: ...

    @property
    def bytes(self) -> int: ...


class TrafficCounters:
    """Frames and bytes per direction: the closed connections' totals, plus what the live
    ones counted so far; :meth:`publish` adds the growth since its last call."""

    __slots__ = ("_closed", "_published", "metrics")

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics
        self._closed = [0, 0, 0, 0]  # c2b frames, c2b bytes, b2c frames, b2c bytes
        self._published = [0, 0, 0, 0]
        for direction in ("c2b", "b2c"):  # exported from the start, at 0
            metrics.frames.labels(direction)
            metrics.bytes.labels(direction)

    def closed(self, conn: Tracked) -> None:
        """A connection is gone: keep its counts (it leaves the live set at the same time)."""
        t = self._closed
        t[0] += conn.c2b.frames
        t[1] += conn.c2b.bytes
        t[2] += conn.b2c.frames
        t[3] += conn.b2c.bytes

    def publish(self, live: Iterable[Tracked]) -> None:
        c2b_f, c2b_b, b2c_f, b2c_b = self._closed
        for c in live:
            up, down = c.c2b, c.b2c
            c2b_f += up.frames
            c2b_b += up.bytes
            b2c_f += down.frames
            b2c_b += down.bytes
        now = (c2b_f, c2b_b, b2c_f, b2c_b)
        p = self._published
        m = self.metrics
        for i, (counter, direction) in enumerate(
            ((m.frames, "c2b"), (m.bytes, "c2b"), (m.frames, "b2c"), (m.bytes, "b2c"))
        ):
            if now[i] > p[i]:
                counter.labels(direction).inc(now[i] - p[i])
                p[i] = now[i]
