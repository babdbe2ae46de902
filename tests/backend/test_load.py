import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.load import DelayHistogram, LoadMeter


def test_rates_and_pressure_hysteresis():
    m = LoadMeter(100.0, high=0.85, low=0.7, tau=0.5)
    t = 0.0
    m.report(t, sessions=0)
    for _ in range(10):  # 95 msg/s on one key
        t += 1
        for _ in range(95):
            m.record("hot", 7, 1e-5)
        rep = m.report(t, sessions=1)
    assert rep.pressure and rep.rate == pytest.approx(95, rel=0.05)
    assert rep.hot_keys[0][0] == "hot" and rep.slots[7] == pytest.approx(rep.rate)
    for _ in range(10):  # 80 msg/s: between the marks, stays raised
        t += 1
        for _ in range(80):
            m.record("hot", 7, 1e-5)
        rep = m.report(t, sessions=1)
    assert rep.pressure
    for _ in range(10):  # 50 msg/s: cleared
        t += 1
        for _ in range(50):
            m.record("hot", 7, 1e-5)
        rep = m.report(t, sessions=1)
    assert not rep.pressure


def test_forget_drops_load_at_once():
    m = LoadMeter(100.0)
    m.report(0, sessions=0)
    for _ in range(50):
        m.record("a", 1, 0.0)
        m.record("b", 2, 0.0)
    m.report(1, sessions=2)
    m.forget("a")
    rep = m.report(1.001, sessions=1)
    assert "a" not in [k for k, _, _ in rep.hot_keys] and 1 not in rep.slots


def test_bad_config():
    with pytest.raises(ValueError):
        LoadMeter(0)
    with pytest.raises(ValueError):
        LoadMeter(10, high=0.5, low=0.6)
    with pytest.raises(ValueError):
        LoadMeter(target_ms=0)


def serve(m: LoadMeter, t: float, arrivals: int, served: int, busy: float, delay_s: float):
    """One second of a queued node: arrivals counted as demand, served with a delay."""
    for _ in range(arrivals):
        m.arrive("k", 3)
    for _ in range(served):
        m.record("k", 3, 1e-5)
        m.sojourn(delay_s)
    return m.report(t, sessions=1, busy=busy)


def test_capacity_is_estimated_from_busy_time_and_demand_is_arrivals():
    """A node serving 500 msg/s at full busy time has a capacity of 500 whatever its
    prior; arrivals at 800 msg/s make its utilization 1.6, and the queue's delay
    raises pressure."""
    m = LoadMeter(prior=5000.0, queued=True, tau=0.5)
    t = 0.0
    m.report(t, sessions=1)
    for _ in range(15):
        t += 1
        rep = serve(m, t, 800, 500, 1.0, 0.4)
    assert rep.capacity == pytest.approx(500, rel=0.01)
    assert rep.rate == pytest.approx(800, rel=0.01)
    assert rep.rate / rep.capacity == pytest.approx(1.6, rel=0.02)
    assert rep.pressure and rep.delay_ms > 300


def test_capacity_estimate_from_partial_busy_time_and_cap():
    m = LoadMeter(prior=100.0, queued=True)
    m.report(0.0, sessions=0)
    rep = serve(m, 1.0, 200, 200, 0.25, 0.002)  # 200 served in a quarter second
    assert rep.capacity == pytest.approx(800)
    assert not rep.pressure
    capped = LoadMeter(300.0, queued=True)
    capped.report(0.0, sessions=0)
    assert serve(capped, 1.0, 200, 200, 0.25, 0.002).capacity == 300.0


def test_idle_intervals_say_nothing_about_capacity():
    m = LoadMeter(prior=123.0, queued=True)
    m.report(0.0, sessions=0)
    assert serve(m, 1.0, 5, 5, 0.01, 0.001).capacity == 123.0  # 1 % busy: ignored


def test_delay_and_loop_lag_raise_pressure_alone():
    m = LoadMeter(1000.0, target_ms=50.0, delay_tau=0.5)
    m.report(0.0, sessions=0)
    for i in range(1, 4):
        for _ in range(10):
            m.record("k", 1, 0.0)
            m.sojourn(0.2)  # 200 ms in the node at 1 % utilization
        rep = m.report(float(i), sessions=1)
    assert rep.rate < 20 and rep.pressure and rep.score > 1
    lagging = LoadMeter(1000.0, lag_target_ms=100.0)
    lagging.report(0.0, sessions=0)
    assert lagging.report(1.0, sessions=0, loop_lag_ms=150.0).pressure


def test_delay_histogram_p90():
    h = DelayHistogram()
    assert h.quantile(0.9) == 0.0
    for i in range(100):
        h.add((i + 1) / 1000)  # 1..100 ms
    p90 = h.quantile(0.9)
    assert 90 <= p90 <= 90 * DelayHistogram.STEP


@given(
    st.lists(
        st.tuples(st.integers(0, 3000), st.floats(0.0, 1.0), st.floats(0.0, 5.0)),
        min_size=1,
        max_size=30,
    ),
    st.floats(0.1, 5.0),
)
def test_report_is_always_sane(intervals, dt):
    """Whatever is observed: finite non-negative figures, capacity > 0, the flag
    consistent with the score's hysteresis, and the score at least utilization."""
    m = LoadMeter(queued=True)
    t = 0.0
    m.report(t, sessions=0)
    was = False
    for n, busy, delay in intervals:
        t += dt
        for _ in range(n):
            m.arrive("k", 1)
            m.record("k", 1, 0.0)
            m.sojourn(delay)
        rep = m.report(t, sessions=1, busy=busy)
        vals = (rep.rate, rep.capacity, rep.score, rep.delay_ms)
        assert all(math.isfinite(v) and v >= 0 for v in vals)
        assert rep.capacity > 0
        assert rep.score >= rep.rate / rep.capacity - 1e-9
        if rep.score > m.high:
            assert rep.pressure
        if rep.score < m.low:
            assert not rep.pressure
        if m.low <= rep.score <= m.high:
            assert rep.pressure == was
        was = rep.pressure


def test_a_configured_capacity_without_measuring_is_reported_as_it_is():
    m = LoadMeter(300.0, measure=False)
    m.report(0.0, sessions=0)
    for _ in range(200):
        m.record("k", 1, 0.0)
    assert m.report(1.0, sessions=1, busy=0.5).capacity == 300.0  # 400/s of CPU ignored
