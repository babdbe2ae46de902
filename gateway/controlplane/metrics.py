"""The control plane's metrics: read from its state at each scrape, nothing kept twice.

Gauges per node (utilization, pressure, liveness, lease age, slots, sessions),
moves in flight, the table's epoch and version; the move history as
counters by reason and outcome. The move durations are a histogram fed by the
history (:meth:`ControlPlaneCollector.observe_move`), since a scrape sees only
the last moves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.controlplane.core import ControlCore
from gateway.controlplane.moves import HistoryEntry
from gateway.metrics import GatewayMetrics

__all__ = ["ControlPlaneCollector"]


class ControlPlaneCollector(Collector):
    def __init__(self, core: ControlCore, metrics: GatewayMetrics, clock: Callable[[], float]):
        self.core = core
        self.clock = clock  # the directory's (leases are kept on it)
        self.move_seconds = metrics.move_seconds
        core.history.observers.append(self.observe_move)
        metrics.registry.register(self)

    def observe_move(self, entry: HistoryEntry) -> None:
        if entry.duration_ms is not None:
            self.move_seconds.labels(entry.outcome_kind).observe(entry.duration_ms / 1000)

    def collect(self) -> Iterator[Metric]:
        core = self.core
        d = core.dir
        labels = ["node"]
        util = GaugeMetricFamily(
            "gateway_node_utilization",
            "A node's reported demand over its estimated capacity",
            labels=labels,
        )
        pressure = GaugeMetricFamily(
            "gateway_node_pressure", "1 while a node reports pressure", labels=labels
        )
        alive = GaugeMetricFamily(
            "gateway_node_alive", "1 while a node holds a lease", labels=labels
        )
        lease_age = GaugeMetricFamily(
            "gateway_node_lease_age_seconds",
            "Seconds since a node's lease was last renewed",
            labels=labels,
        )
        slots = GaugeMetricFamily("gateway_node_slots", "Slots a node owns", labels=labels)
        sessions = GaugeMetricFamily(
            "gateway_node_sessions", "Sessions a node reports", labels=labels
        )
        now = self.clock()
        owners = d.table.owners
        for n in d.nodes.values():
            ld = n.load
            util.add_metric([n.id], ld.rate / ld.capacity if ld is not None else 0.0)
            pressure.add_metric([n.id], 1.0 if ld is not None and ld.pressure else 0.0)
            alive.add_metric([n.id], 1.0 if n.alive else 0.0)
            lease_age.add_metric([n.id], max(0.0, now - (n.lease_until - d.lease_s)))
            slots.add_metric([n.id], owners.count(n.id))
            sessions.add_metric([n.id], ld.sessions if ld is not None else 0)
        yield from (util, pressure, alive, lease_age, slots, sessions)
        yield GaugeMetricFamily(
            "gateway_moves_in_flight",
            "Moves released and not yet committed or aborted",
            len(d.moves),
        )
        history = CounterMetricFamily(
            "gateway_moves",
            "Finished moves, by reason and outcome (done, aborted)",
            labels=["reason", "outcome"],
        )
        for (reason, outcome), count in sorted(core.history.by_reason.items()):
            history.add_metric([reason, outcome], count)
        yield history
        yield GaugeMetricFamily(
            "gateway_table_epoch", "The directory's epoch counter (last handed out)", d.epoch
        )
        yield GaugeMetricFamily(
            "gateway_table_version", "The slot table's version", d.table.version
        )
        yield GaugeMetricFamily(
            "gateway_table_overrides", "Keys with an owner of their own", len(d.table.overrides)
        )
        yield GaugeMetricFamily(
            "gateway_unsplittable_keys",
            "Keys hotter than any node's fair share: each isolated on a node of its own",
            len(core.isolated),
        )
        yield GaugeMetricFamily(
            "gateway_rebalancer_paused",
            "1 while automatic moves are paused",
            1 if core.paused else 0,
        )
