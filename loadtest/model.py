"""The load model: who connects to which key, and how fast each client sends. Pure.

* Key popularity: uniform, or Zipf(s) over ``keys`` keys (rank r has weight 1/r^s).
* A hotspot: from ``at`` for ``duration`` seconds, ``share`` of the fleet's traffic
  goes to ``hot_keys`` keys (chosen by the caller, by default all on one node),
  while the total rate stays the same. Hot-key clients are connected from the
  start and send at a quiet rate (``quiet`` times the base rate; 0: silent) outside it.
* A flash crowd: ``count`` extra clients connect to one key at ``at``.

Rates are messages/s per client; sends are Poisson (open loop).
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

QUIET = 0.1  # hot-key clients send at this fraction of the base rate before the onset


@dataclass(frozen=True, slots=True)
class Hotspot:
    at: float
    duration: float
    share: float  # of total traffic, during the hotspot
    keys: int

    @property
    def end(self) -> float:
        return self.at + self.duration


@dataclass(frozen=True, slots=True)
class ClientSpec:
    index: int
    key: str
    hot: bool  # belongs to the hotspot
    start: float  # seconds after t0 when it connects
    rate_before: float
    rate_during: float
    rate_after: float

    def rate_at(self, t: float, hotspot: Hotspot | None) -> float:
        if hotspot is None or t < hotspot.at:
            return self.rate_before
        return self.rate_during if t < hotspot.end else self.rate_after


class ZipfSampler:
    """Draw ranks 0..n-1 with P(r) ∝ 1/(r+1)^s (s = 0 is uniform)."""

    def __init__(self, n: int, s: float):
        if n < 1 or s < 0:
            raise ValueError("zipf needs n >= 1 and s >= 0")
        weights = [1.0 / (r + 1) ** s for r in range(n)]
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1]

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect_left(self.cum, rng.random() * self.total)

    def share(self, rank: int) -> float:
        prev = self.cum[rank - 1] if rank else 0.0
        return float((self.cum[rank] - prev) / self.total)


def build_clients(
    *,
    clients: int,
    keys: list[str],
    hot_keys: list[str],
    zipf: float,
    rate: float,
    hotspot: Hotspot | None,
    ramp_per_s: float,
    seed: int = 1,
    quiet: float = QUIET,
) -> list[ClientSpec]:
    """The client population of a run: cold clients over ``keys``, hot ones over ``hot_keys``."""
    if clients < 1 or rate <= 0 or ramp_per_s <= 0:
        raise ValueError("need clients >= 1, rate > 0 and ramp_per_s > 0")
    if not 0 <= quiet <= 1:
        raise ValueError("quiet must be in [0, 1]")
    rng = random.Random(seed)
    n_hot = 0
    if hotspot is not None and hot_keys:
        if not 0 < hotspot.share < 1:
            raise ValueError("hotspot share must be in (0, 1)")
        n_hot = max(len(hot_keys), round(clients * hotspot.share))
        n_hot = min(n_hot, clients - 1)
    n_cold = clients - n_hot
    total = clients * rate
    # Keep the fleet's total rate constant across the onset: cold clients slow down
    # by exactly what the hot ones add.
    hot_before = rate * quiet
    cold_before = (total - n_hot * hot_before) / n_cold
    if hotspot is not None and n_hot:
        hot_during = hotspot.share * total / n_hot
        cold_during = (1 - hotspot.share) * total / n_cold
    else:
        hot_during, cold_during = hot_before, cold_before
    zipf_keys = ZipfSampler(len(keys), zipf)
    specs: list[ClientSpec] = []
    for i in range(clients):
        start = i / ramp_per_s
        if i % max(clients // max(n_hot, 1), 1) == 0 and sum(s.hot for s in specs) < n_hot:
            key = hot_keys[sum(s.hot for s in specs) % len(hot_keys)]
            specs.append(ClientSpec(i, key, True, start, hot_before, hot_during, hot_before))
        else:
            key = keys[zipf_keys.draw(rng)]
            specs.append(ClientSpec(i, key, False, start, cold_before, cold_during, cold_before))
    # A short population may have skipped some hot slots: top up from the end.
    missing = n_hot - sum(s.hot for s in specs)
    for j in range(len(specs) - 1, -1, -1):
        if missing <= 0:
            break
        s = specs[j]
        if not s.hot:
            key = hot_keys[missing % len(hot_keys)]
            specs[j] = ClientSpec(s.index, key, True, s.start, hot_before, hot_during, hot_before)
            missing -= 1
    return specs


def poisson_gap(rate: float, rng: random.Random) -> float:
    """Seconds to the next send of a Poisson process at ``rate``/s."""
    return -math.log(1.0 - rng.random()) / rate


def next_send(t: float, spec: ClientSpec, hotspot: Hotspot | None, rng: random.Random) -> float:
    """The next send time after ``t`` of a Poisson process whose rate changes at the
    hotspot's edges. A gap crossing an edge is redrawn from the edge at the new rate
    (exact, as the process is memoryless): the onset is sharp, not smeared over a gap."""
    while True:
        rate = spec.rate_at(t, hotspot)
        if rate <= 0:  # silent until the next edge (if any)
            edges = [e for e in (hotspot.at, hotspot.end) if e > t] if hotspot else []
            if not edges:
                return math.inf
            t = min(edges)
            continue
        nxt = t + poisson_gap(rate, rng)
        edge = None
        if hotspot is not None:
            edge = next((e for e in (hotspot.at, hotspot.end) if t < e <= nxt), None)
        if edge is None:
            return nxt
        t = edge


def hot_share(specs: list[ClientSpec], t: float, hotspot: Hotspot | None) -> float:
    """Expected share of traffic on hot keys at time ``t`` (for checks and reports)."""
    hot = sum(s.rate_at(t, hotspot) for s in specs if s.hot)
    total = sum(s.rate_at(t, hotspot) for s in specs)
    return hot / total if total else 0.0


def capacity_for(
    total_rate: float, nodes: int, share: float, *, high: float = 0.85, mean_util: float = 0.6
) -> float:
    """A per-node capacity (messages/s) such that the hotspot node passes ``high`` while
    the fleet's mean utilization stays under ``mean_util``."""
    hot_node = share * total_rate + (1 - share) * total_rate / nodes
    upper = hot_node / (high * 1.08)  # hot node clearly above the high-water mark
    lower = total_rate / (nodes * mean_util)
    return max(min(upper, (upper + lower) / 2), lower)
