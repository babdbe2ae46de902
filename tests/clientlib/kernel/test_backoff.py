import pytest
from hypothesis import given
from hypothesis import strategies as st

from clientlib.kernel.backoff import BackoffPolicy, reconnect_delay
from clientlib.kernel.session_protocol import Action, CloseHint

rand = st.floats(0, 1, exclude_max=True)


@given(st.integers(0, 1000), rand)
def test_full_jitter_bounds(attempt, r):
    p = BackoffPolicy()
    d = reconnect_delay(p, attempt, Action.RECONNECT, CloseHint(), r)
    assert d is not None
    assert 0 <= d <= min(p.cap, p.base * 2**attempt) + 1e-9


def test_jitter_spreads_uniformly():
    p = BackoffPolicy(base=1, cap=8)
    ds = [reconnect_delay(p, 3, Action.RECONNECT, CloseHint(), i / 1000) for i in range(1000)]
    assert min(ds) == 0 and max(ds) == pytest.approx(8 * 0.999)
    buckets = [sum(1 for d in ds if d is not None and k <= d < k + 1) for k in range(8)]
    assert max(buckets) - min(buckets) <= 2


@given(st.integers(1, 3_600_000), rand, st.integers(0, 50))
def test_retry_after_honoured(after, r, attempt):
    d = reconnect_delay(BackoffPolicy(), attempt, Action.RETRY_AFTER, CloseHint(after_ms=after), r)
    assert d is not None
    assert after / 1000 <= d <= after / 1000 * 1.25 + 1e-9


@given(st.integers(1, 600_000), rand)
def test_moved_window_honoured(window, r):
    d = reconnect_delay(BackoffPolicy(), 9, Action.RECONNECT_WINDOW, CloseHint(window_ms=window), r)
    assert d is not None and 0 <= d <= window / 1000


def test_stop_never_retries():
    assert reconnect_delay(BackoffPolicy(), 0, Action.STOP, CloseHint(after_ms=5), 0.5) is None


def test_bad_policy():
    with pytest.raises(ValueError):
        BackoffPolicy(base=0)
    with pytest.raises(ValueError):
        BackoffPolicy(base=5, cap=1)
