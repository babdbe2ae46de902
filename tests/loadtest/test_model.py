import random

import pytest

from loadtest.model import (
    Hotspot,
    ZipfSampler,
    build_clients,
    capacity_for,
    hot_share,
    next_send,
)


def test_zipf_shares():
    z = ZipfSampler(100, 1.0)
    rng = random.Random(3)
    n = 200_000
    draws = [z.draw(rng) for _ in range(n)]
    for rank in (0, 1, 9):
        assert draws.count(rank) / n == pytest.approx(z.share(rank), rel=0.05)
    u = ZipfSampler(10, 0.0)
    assert u.share(0) == pytest.approx(0.1)


@pytest.mark.parametrize("share", [0.2, 0.4, 0.6])
def test_hotspot_share_and_constant_total(share):
    hs = Hotspot(10, 20, share, 4)
    specs = build_clients(
        clients=1000,
        keys=[f"k{i}" for i in range(200)],
        hot_keys=["h0", "h1", "h2", "h3"],
        zipf=1.0,
        rate=1.0,
        hotspot=hs,
        ramp_per_s=100,
    )
    assert hot_share(specs, 15, hs) == pytest.approx(share, abs=0.01)
    assert hot_share(specs, 5, hs) < 0.1
    totals = [sum(s.rate_at(t, hs) for s in specs) for t in (5, 15, 35)]
    assert totals == pytest.approx([1000, 1000, 1000])
    assert {s.key for s in specs if s.hot} == {"h0", "h1", "h2", "h3"}


def test_poisson_onset_is_sharp():
    """Sends at the new rate start at the onset, not after a gap drawn at the old rate."""
    hs = Hotspot(10, 10, 0.4, 1)
    spec = build_clients(
        clients=10, keys=["k"], hot_keys=["h"], zipf=0, rate=10, hotspot=hs, ramp_per_s=10
    )
    hot = next(s for s in spec if s.hot)
    rng = random.Random(1)
    firsts = []
    for _ in range(2000):
        firsts.append(next_send(9.99, hot, hs, rng))
    # rate during is high: the first send after the onset comes quickly
    assert sorted(firsts)[1000] < 10.0 + 1.0 / hot.rate_during


def test_capacity_overloads_only_the_hot_node():
    total, nodes, share = 1000.0, 3, 0.4
    cap = capacity_for(total, nodes, share)
    hot_node = share * total + (1 - share) * total / nodes
    assert hot_node / cap > 0.85
    assert total / (nodes * cap) < 0.6
