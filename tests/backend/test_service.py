"""The service queue: FIFO, fixed service time, dead items free."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.service import ServiceQueue


def alive(_: int) -> bool:
    return False


def test_finishes_at_max_of_arrival_and_previous_finish():
    q: ServiceQueue[int] = ServiceQueue(0.01)
    q.offer(0.0, 1)
    q.offer(0.0, 2)
    q.offer(0.5, 3)
    assert q.next_at(alive) == pytest.approx(0.01)
    done, _ = q.due(0.015, alive)
    assert [i for _, i in done] == [1]
    assert q.next_at(alive) == pytest.approx(0.02)
    done, _ = q.due(0.5, alive)
    assert [i for _, i in done] == [2]
    assert q.next_at(alive) == pytest.approx(0.51)  # idle server: from its arrival
    done, _ = q.due(1.0, alive)
    assert [(a, i) for a, i in done] == [(0.5, 3)]
    assert q.served == 3 and q.busy_s == pytest.approx(0.03) and q.next_at(alive) is None


def test_dead_items_take_no_time():
    q: ServiceQueue[int] = ServiceQueue(0.01)
    for i in range(4):
        q.offer(0.0, i)
    done, dropped = q.due(0.02, lambda i: i in (0, 2))
    assert [i for _, i in done] == [1, 3] and dropped == [0, 2]
    assert q.busy_s == pytest.approx(0.02)


def test_bad_service_time():
    with pytest.raises(ValueError):
        ServiceQueue(0.0)


@given(
    st.lists(st.floats(0, 0.05), min_size=1, max_size=60),
    st.floats(0.001, 0.02),
    st.lists(st.floats(0, 0.1), min_size=1, max_size=20),
)
def test_order_and_rate_bound(gaps, service, polls):
    """Items leave in arrival order, never before arrival + service, never faster
    than one per service time, and every item leaves once time has passed."""
    q: ServiceQueue[int] = ServiceQueue(service)
    t = 0.0
    arrivals = []
    for i, g in enumerate(gaps):
        t += g
        q.offer(t, i)
        arrivals.append(t)
    out: list[tuple[float, float, int]] = []  # (poll time, arrival, item)
    now = 0.0
    for p in polls:
        now += p
        done, dropped = q.due(now, alive)
        assert not dropped
        out += [(now, a, i) for a, i in done]
    done, _ = q.due(now + service * (len(gaps) + 1) + t, alive)
    out += [(float("inf"), a, i) for a, i in done]
    assert [i for _, _, i in out] == list(range(len(gaps)))
    finish = float("-inf")
    for _, a, _ in out:
        finish = max(a, finish) + service
    # The last finish is where the virtual clock says: the server never ran faster.
    assert q.finish == pytest.approx(finish)
    assert q.busy_s == pytest.approx(service * len(gaps))
