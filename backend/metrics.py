"""Prometheus metrics of one backend node (its own registry), served at ``/metrics``.

The counters are the node's own tallies (:attr:`Node.stats`, the server's
refusals), read at each scrape: the message path does no metric work. The one
histogram, reconnect to resume, is fed once per resumed session.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.node import Node

__all__ = ["BackendMetrics"]

# Seconds: a blip on loopback (~10 ms) to a session's time to live.
RESUME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Served(Protocol):
    """What the metrics read from the server."""

    @property
    def refused(self) -> Mapping[str, int]: ...

    @property
    def connection_count(self) -> int: ...


class BackendMetrics(Collector):
    def __init__(self, node: Node, server: Served):
        self.node = node
        self.server = server
        self.registry = CollectorRegistry()
        self.resume_seconds = Histogram(
            "backend_resume_seconds",
            "A session's connection ending here to the same session attached again here",
            buckets=RESUME_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        st = node.stats

        def counter(name: str, help_: str, stat: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, help_, st[stat])

        yield counter("backend_messages", "Client messages processed", "messages")
        yield counter(
            "backend_duplicates", "Client messages seen before (dropped, acked)", "duplicates"
        )
        attached = CounterMetricFamily(
            "backend_sessions_attached",
            "Hellos answered, by outcome: resumed (a known session) or new",
            labels=["outcome"],
        )
        attached.add_metric(["resumed"], st["resumed"])
        attached.add_metric(["not_resumed"], st["not_resumed"])
        yield attached
        yield counter(
            "backend_stale_writes",
            "State writes the store fenced off (a newer owner)",
            "stale_writes",
        )
        yield counter(
            "backend_store_errors", "State store reads or writes that failed", "store_errors"
        )
        yield counter(
            "backend_send_queue_full",
            "Sessions ended because their replay buffer was full (4002)",
            "send_queue_full",
        )
        refused = CounterMetricFamily(
            "backend_refused_upgrades",
            "Upgrades refused, by reason: unvouched (403), not_owner (421), bad_request (400)",
            labels=["reason"],
        )
        for reason, count in sorted(self.server.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily(
            "backend_held_bytes", "Client input held unprocessed, all connections", node.held_bytes
        )
        yield GaugeMetricFamily(
            "backend_connections", "Open client connections", self.server.connection_count
        )
        yield GaugeMetricFamily("backend_keys", "Keys active in memory", len(node.keys))
        yield GaugeMetricFamily(
            "backend_sessions", "Sessions with a live connection", node.session_count
        )
