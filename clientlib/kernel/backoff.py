"""When to reconnect: exponential backoff with full jitter, honouring server hints. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from clientlib.kernel.session_protocol import Action, CloseHint

__all__ = [
    "BackoffPolicy",
    "reconnect_delay",
]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Reconnect timing. Delays are in seconds.

    ``base`` doubles per failed attempt up to ``cap``; the wait is drawn uniformly
    in [0, that] (AWS's "full jitter"), which spreads a crowd of clients best.
    ``default_window`` spreads reconnects after a move or drain whose close
    reason carried no window.
    """

    base: float = 0.25
    cap: float = 30.0
    default_window: float = 1.0
    stable_after: float = 10.0  # a connection that lived this long resets the attempt count

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError("backoff needs 0 < base <= cap")
        if self.default_window <= 0 or self.stable_after < 0:
            raise ValueError("default_window must be > 0 and stable_after >= 0")


def reconnect_delay(
    policy: BackoffPolicy, attempt: int, action: Action, hint: CloseHint, rand: float
) -> float | None:
    """Seconds to wait before reconnect attempt ``attempt`` (0 = first), or None to stop.

    ``rand`` is a uniform draw in [0, 1), injected so the policy is deterministic in tests.
    """
    if action is Action.STOP:
        return None
    ceiling = min(policy.cap, policy.base * 2.0 ** min(attempt, 32))
    if action is Action.RECONNECT_WINDOW:
        window = hint.window_ms / 1000 if hint.window_ms else policy.default_window
        return float(rand * window)
    if action is Action.RETRY_AFTER and hint.after_ms:
        after = hint.after_ms / 1000
        # Everyone told "after N" must not come back at exactly N: spread over N/4.
        return after + rand * after / 4
    return rand * ceiling
