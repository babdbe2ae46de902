"""Scenarios as run, the steady window, the rescue figures and the matrix's sizing. Pure."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from clientlib.kernel.settings import ConfigError
from loadtest.matrix import SHAPES, row, scenario_of, table, write_markdown
from loadtest.model import Hotspot, build_clients, next_send
from loadtest.scenario import STEADY_S, Scenario, load_scenario
from loadtest.stats import rescue
from loadtest.worker import new_hist


def test_banner_describes_the_scenario_as_run():
    sc = load_scenario("default", {"backends": 3, "hotspot_share": 0.3, "capacities": "1,1,2"})
    text = sc.describe()
    assert text.startswith("3 backends") and "30% of the traffic" in text
    assert "x1,1,2" in text and "rebalance on" in text
    off = load_scenario("default", {"rebalance": False, "hotspot_at": -1})
    assert "rebalance off" in off.describe() and "traffic moves" not in off.describe()


def test_service_times_follow_capacities():
    sc = Scenario(backends=3, service_time_us=2000, capacities="1,0.5,2")
    assert sc.service_times() == {"node-1": 2000.0, "node-2": 4000.0, "node-3": 1000.0}
    assert Scenario(backends=2).service_times() == {}
    with pytest.raises(ConfigError, match="2 figures for 3 backends"):
        Scenario(backends=3, capacities="1,2")
    with pytest.raises(ConfigError, match="expected numbers"):
        Scenario(backends=2, capacities="1,fast")
    with pytest.raises(ConfigError, match=r"\[0.1, 10\]"):
        Scenario(backends=2, capacities="1,20")


def test_steady_window_is_after_the_ramp_and_before_the_onset():
    sc = Scenario(clients=400, ramp_per_s=500, hotspot_at=20)
    assert sc.steady_window() == (20 - STEADY_S, 20)
    early = Scenario(clients=400, ramp_per_s=100, hotspot_at=8, duration=30)
    assert early.steady_window() == (7.0, 8)  # the ramp ends at 4 s + 3 s
    assert Scenario(hotspot_at=-1).steady_window() is None


def test_silent_hot_clients_send_only_during_the_hotspot():
    hs = Hotspot(5.0, 10.0, 0.5, 2)
    specs = build_clients(
        clients=20,
        keys=["a", "b"],
        hot_keys=["h1", "h2"],
        zipf=0.8,
        rate=2.0,
        hotspot=hs,
        ramp_per_s=100,
        quiet=0.0,
    )
    hot = next(s for s in specs if s.hot)
    rng = random.Random(3)
    t, sends = 0.0, []
    while True:
        t = next_send(t, hot, hs, rng)
        if t == float("inf"):
            break
        sends.append(t)
    assert sends and all(5.0 <= x < 15.0 for x in sends)


def progress(t: float, values_ms: list[float]) -> dict:
    h = new_hist()
    for v in values_ms:
        h.record_value(int(v * 1000))
    return {"t": t, "hist": h.encode()}


def test_rescue_figures():
    prog = [progress(t + 0.5, [10.0] * 50) for t in range(0, 10)]  # steady: 10 ms
    prog += [progress(t + 0.5, [500.0] * 50) for t in range(10, 14)]  # the overload
    prog += [progress(t + 0.5, [12.0] * 50) for t in range(14, 30)]  # back
    from loadtest.stats import merge, pcts

    def window(a: float, b: float) -> dict:
        return pcts(merge([p for p in prog if a <= p["t"] < b]))

    windows = {"before": window(0, 10), "during": window(10, 30), "settled": window(20, 30)}
    series = [(float(t), 2.0 if t < 14 else 1.1) for t in range(0, 30)]
    r = rescue(windows, series, prog, 10.0, 30.0)
    assert r is not None
    assert r["p99_steady_ms"] == pytest.approx(10, rel=0.01)
    assert r["during_over_steady"] > 40
    assert r["settled_over_steady"] == pytest.approx(1.2, rel=0.01)
    assert r["imbalance_settled_max"] == 1.1
    assert r["p99_back_s"] == 5.0  # the second from 14 s to 15 s was back
    assert rescue({"before": {"count": 0}}, [], [], 10.0, 30.0) is None


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_matrix_shapes_are_sized_for_their_utilization(shape):
    sc = scenario_of(shape, clients=300, rate=2.0, rebalance=True)
    caps = [1e6 / us for us in sc.service_times().values()]
    assert len(caps) == shape.backends
    assert 600 / sum(caps) == pytest.approx(shape.util, rel=0.01)
    assert sc.hotspot_keys == shape.hot_keys and sc.hotspot_share == shape.share


def test_matrix_table_replaces_its_block(tmp_path: Path):
    r = {
        "rebalance": True,
        "time_to_rebalance_s": 6.5,
        "imbalance_peak": 2.1,
        "moves": 3,
        "moved_load": 120.0,
        "lost": 0,
        "duplicated": 0,
        "unsplittable": [{"key": "k", "node": "n", "rate": 1.0, "fair_share": 0.5}],
        "rescue": {
            "imbalance_settled_max": 1.1,
            "p99_steady_ms": 10.0,
            "p99_during_ms": 200.0,
            "p99_settled_ms": 11.0,
            "p99_back_s": 7.0,
        },
    }
    lines = table([row(SHAPES[0], r)])
    assert "| 6.5 | 2.1; 1.1 | 10 / 200 / 11 | 7 | 3 (120) | 1 | 0 / 0 |" in lines[-1]
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\n<!-- bench:matrix:start -->\nold\n<!-- bench:matrix:end -->\ntail\n")
    write_markdown(doc, lines, "python -m loadtest matrix", 0.0, (1.0, 1.0, 1.0))
    text = doc.read_text()
    assert "old" not in text and text.endswith("tail\n") and "6.5" in text
