"""``--workers N``: N gateway processes on one port, and the parent that watches them.

The parent forks the workers before any event loop exists; each binds the
client port with ``SO_REUSEPORT`` (the kernel spreads new connections over
them) and its own admin port (``admin_listen`` + i). Worker 0 runs the control
plane, if any; the others route from its state file
(:class:`~gateway.route_file.FileRouteSource`).

The parent only waits: SIGTERM or SIGINT is passed to every worker, each
drains (see ``docs/gateway.md``, Drain) and the parent exits once all have. A
worker asked to drain and exit through its admin API signals the parent, so
the whole gateway goes. A worker that dies on its own after it was up is
started again; one that fails at start (a port taken) stops them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

import structlog

__all__ = ["supervise"]

log = structlog.get_logger("gateway")

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
MIN_UPTIME_S = 5.0  # a worker that dies sooner failed at start: do not loop restarting it


def supervise(workers: int, run_worker: Callable[[int], int]) -> int:
    """Fork ``workers`` processes running ``run_worker(i)`` (its return: the exit code);
    returns the parent's exit code once all are gone."""
    # A handler, so SIGCHLD is not discarded as ignored; blocked, so sigwait() takes it.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    children: dict[int, tuple[int, float]] = {}  # pid → (worker index, started)

    def spawn(i: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            code = 1
            try:
                code = run_worker(i)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = (i, time.monotonic())

    for i in range(workers):
        spawn(i)
    log.info("gateway_workers_started", workers=workers, pids=sorted(children))
    stopping = False
    code = 0
    while children:
        sig = signal.sigwait(SIGNALS)
        if sig != signal.SIGCHLD and not stopping:
            stopping = True
            log.info("gateway_workers_stopping", signal=signal.Signals(sig).name)
            _signal_all(children, signal.SIGTERM)
        for pid, status in _reaped():
            i, started = children.pop(pid, (-1, 0.0))
            exit_code = os.waitstatus_to_exitcode(status)
            if stopping or i < 0:
                code = max(code, exit_code)
                continue
            if time.monotonic() - started < MIN_UPTIME_S:
                log.error("gateway_worker_failed_at_start", worker=i, code=exit_code)
                stopping = True
                code = exit_code or 1
                _signal_all(children, signal.SIGTERM)
                continue
            log.error("gateway_worker_died", worker=i, code=exit_code)
            spawn(i)
    return code


def _signal_all(children: dict[int, tuple[int, float]], sig: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reaped() -> list[tuple[int, int]]:
    out = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        out.append((pid, status))
    return out
