import pytest

from backend.load import LoadMeter


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
