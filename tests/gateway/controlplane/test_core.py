"""The control plane's sans-I/O core: registrations, leases, moves and restarts."""

from __future__ import annotations

import pytest

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import NUM_SLOTS
from gateway.controlplane.core import (
    Broadcast,
    ControlCore,
    CoreConfig,
    Disconnect,
    MoveFinished,
    Send,
)
from gateway.controlplane.directory import EmbeddedDirectory, MemoryStorage
from gateway.controlplane.planner import Move

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def load(rate: float = 0.0) -> cp.LoadReport:
    return cp.LoadReport(rate, 1000.0, rate / 1000, False, 0, 0, {}, (), 0.0)


def register(core: ControlCore, node: str, inc: str = "i1", max_epoch: int = 0):
    msg = cp.Register(node, inc, ("127.0.0.1", 9000), 1000.0, {}, max_epoch)
    return core.register(core.dir.clock(), msg)


def fleet(storage: MemoryStorage | None = None, clock: Clock | None = None):
    clock = clock or Clock()
    storage = storage or MemoryStorage()
    d = EmbeddedDirectory(storage, lease_s=3.0, clock=clock)
    core = ControlCore(d, CoreConfig(rebalance=False), wall=clock)
    return core, d, clock, storage


def sent(effects, node, kind):
    return [
        e.msg for e in effects if isinstance(e, Send) and e.node == node and isinstance(e.msg, kind)
    ]


def up(core: ControlCore, clock: Clock, *nodes: str) -> None:
    for n in nodes:
        ok, _ = register(core, n)
        assert ok
    clock.t += 1.5
    core.tick(clock.t)
    assert None not in core.dir.table.owners


def test_registration_is_answered_with_table_and_lease():
    core, _d, clock, _ = fleet()
    ok, effects = register(core, "a")
    assert ok
    assert sent(effects, "a", cp.TableUpdate) and sent(effects, "a", cp.Granted)
    out = core.received(clock.t, "a", cp.Report(1, load(), 99))
    (granted,) = sent(out, "a", cp.Granted)
    assert granted == cp.Granted(1, 3000)
    assert sent(out, "a", cp.TableUpdate)  # its table version was behind


def test_a_live_node_id_is_not_taken_by_another_process():
    core, _d, clock, _ = fleet()
    assert register(core, "a", "first")[0]
    assert not register(core, "a", "second")[0]  # refused while the first one's lease runs
    assert register(core, "a", "first")[0]  # the same process reconnecting is fine
    clock.t += 3.5
    core.tick(clock.t)  # the first one is gone
    assert register(core, "a", "second")[0]


def test_epochs_never_fall_below_what_nodes_have_seen():
    """Defect 4: a control plane that lost its state directory would restart at epoch 1."""
    core, d, _clock, _ = fleet()
    register(core, "a", max_epoch=5000)
    assert d.next_epoch() == 5001


def move_k(core: ControlCore, clock: Clock) -> tuple[int, list]:
    """Start moving key k (given its own unit on a) from a to b."""
    unit = ("key", "k")
    core.dir.assign(unit, "a", core.dir.next_epoch())
    core.dir.save()
    return core.start_move(clock.t, "a", [Move(unit, "a", "b", 1.0)], "test")


def test_a_move_commits_only_on_the_sources_released():
    core, d, clock, _ = fleet()
    up(core, clock, "a", "b")
    move, effects = move_k(core, clock)
    (release,) = sent(effects, "a", cp.Release)
    assert release.targets == ((("key", "k"), "b"),)
    # a forged or misdirected released from another node changes nothing
    assert core.received(clock.t, "b", cp.Released(move, 1)) == []
    assert d.owner_of(("key", "k")) == "a"
    out = core.received(clock.t, "a", cp.Released(move, 1))
    assert d.owner_of(("key", "k")) == "b"
    assert d.table.overrides["k"] == ("b", release.epoch)
    assert any(isinstance(e, Broadcast) for e in out)
    assert MoveFinished(move, True, "done") in out
    assert core.received(clock.t, "a", cp.Released(move, 1)) == []  # late duplicate


def test_release_is_resent_until_answered_then_aborted_at_a_newer_epoch():
    core, d, clock, _ = fleet()
    up(core, clock, "a", "b")
    move, _ = move_k(core, clock)
    epoch = d.moves[move].epoch
    resent = []
    for _ in range(5):
        clock.t += 0.5
        for n in ("a", "b"):
            core.received(clock.t, n, cp.Report(1, load(), d.table.version))
        out = core.tick(clock.t)
        resent += sent(out, "a", cp.Release)
        to_a = [e.msg for e in out if isinstance(e, Send) and e.node == "a"]
        if any(isinstance(m, cp.Release) for m in to_a):
            assert [type(m) for m in to_a[-2:]] == [cp.TableUpdate, cp.Release]
    assert len(resent) >= 4  # every release_retry_s
    # Each carries the table it was planned on, and goes right after that table (a
    # source that missed the table ignores the release until it has it).
    assert {r.version for r in resent} == {d.table.version}
    clock.t += 1.0
    for n in ("a", "b"):
        core.received(clock.t, n, cp.Report(1, load(), d.table.version))
    out = core.tick(clock.t)
    assert any(isinstance(e, MoveFinished) and not e.committed for e in out)
    owner, at = d.table.holder(("key", "k"))
    assert owner == "a" and at > epoch  # given back above the epoch the source flushed at


def test_a_failed_flush_aborts_at_once():
    core, d, clock, _ = fleet()
    up(core, clock, "a", "b")
    move, _ = move_k(core, clock)
    out = core.received(clock.t, "a", cp.Released(move, 0, "k: failed"))
    assert any(isinstance(e, MoveFinished) and not e.committed for e in out)
    assert d.owner_of(("key", "k")) == "a"


def test_a_restarted_control_plane_finishes_the_move_in_flight():
    """Defect 4: the plane dies between release and commit. The move record and the
    epoch were saved before the release went out: the next process resends and commits."""
    core, d, clock, storage = fleet()
    up(core, clock, "a", "b")
    move, _ = move_k(core, clock)
    epoch = d.moves[move].epoch
    core2, d2, _, _ = fleet(storage, clock)  # a new process on the same disk
    assert move in d2.moves and d2.epoch >= epoch
    register(core2, "a")
    register(core2, "b")
    assert sent(core2.tick(clock.t), "a", cp.Release)
    core2.received(clock.t, "a", cp.Released(move, 1))
    assert d2.table.holder(("key", "k")) == ("b", epoch)
    assert d2.next_epoch() > epoch


def test_a_dead_node_that_wakes_up_must_register_again():
    """Defect 6: a node that stalled past its lease is not ignored forever."""
    core, d, clock, _ = fleet()
    up(core, clock, "a", "b")
    clock.t += 2.0
    core.received(clock.t, "b", cp.Report(2, load(), d.table.version))
    clock.t += 1.5
    out = core.tick(clock.t)  # a's lease ran out
    assert Disconnect("a", "lease expired") in out
    assert "a" not in d.table.owners
    late = core.received(clock.t, "a", cp.Report(3, load(), 0))
    assert sent(late, "a", cp.Refused) and any(isinstance(e, Disconnect) for e in late)
    assert register(core, "a")[0]  # and it comes back as a fresh member


def test_a_leaving_node_is_replaced_at_once():
    core, d, clock, _ = fleet()
    up(core, clock, "a", "b")
    out = core.received(clock.t, "a", cp.Leave("a"))
    assert sent(out, "a", cp.Left)
    assert d.table.owners.count("b") == NUM_SLOTS
    assert register(core, "a", "new-process")[0]  # its replacement is not refused


@pytest.mark.parametrize("how", ["left", "dead"])
def test_units_of_a_node_gone_with_nobody_to_take_them_go_to_the_next_node(how):
    """Found by the simulator (seed 382, heavy faults, handoff): the last live node left
    (or died) with nobody to take its units, so they stayed with it; a node registering
    later was never given them, and their keys waited for that node to come back."""
    core, d, clock, _ = fleet()
    up(core, clock, "a")
    if how == "left":
        core.received(clock.t, "a", cp.Leave("a"))
    else:
        clock.t += 3.5
        core.tick(clock.t)
    assert d.table.owners.count("a") == NUM_SLOTS  # nobody to give them to
    epoch = d.epoch
    register(core, "b")
    clock.t += 0.5
    out = core.tick(clock.t)
    assert d.table.owners.count("b") == NUM_SLOTS
    assert min(d.table.epochs) > epoch  # new epochs: whatever "a" wrote is fenced
    assert any(isinstance(e, Broadcast) for e in out)
