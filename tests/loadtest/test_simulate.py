"""The deterministic simulator in CI: many seeds over every fault profile and durability
mode, the same trace for the same seed, planted bugs caught, and the seeds that found
bugs in the cores replayed (docs/reliability.md lists them)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backend.config import DURABILITY_MODES
from backend.control_agent import ControlAgent
from backend.node import Node, NotOwner, Persisted
from clientlib.kernel import control_protocol as cp
from clientlib.kernel.session_protocol import Hello
from gateway.controlplane.core import ControlCore
from gateway.controlplane.directory import EmbeddedDirectory
from loadtest.sim import simulate
from loadtest.sim.faults import PROFILES
from loadtest.simulate import run_seeds

pytestmark = pytest.mark.timeout(300)

CI_SEEDS = 600


def test_600_seeds_over_every_profile_and_mode_break_no_invariant():
    results = list(run_seeds(range(CI_SEEDS), list(PROFILES), list(DURABILITY_MODES), workers=2))
    assert len(results) == CI_SEEDS
    assert {(r.profile, r.durability) for r in results} == {
        (p, d) for p in PROFILES for d in DURABILITY_MODES
    }
    bad = sorted((r for r in results if not r.ok), key=lambda r: r.seed)
    assert not bad, "\n".join(
        f"seed {r.seed} ({r.profile}, {r.durability}) {r.invariant}: {r.detail}" for r in bad[:5]
    )
    total: dict[str, int] = {}
    for r in results:
        for k, v in r.counts.items():
            total[k] = total.get(k, 0) + v
    # The seeds went where the bugs live: moves both ways, lost state, refused resumes.
    for what in ("moves committed", "moves aborted", "history entries dropped (licensed)"):
        assert total.get(what, 0) > 0, what
    assert total.get("welcomes not_resumed", 0) > 0


def test_a_seed_gives_the_same_trace_every_time():
    a = simulate(7, "heavy", "write-through")
    b = simulate(7, "heavy", "write-through")
    assert (a.digest, a.steps) == (b.digest, b.steps)
    # and in another process, with another string hash seed
    code = "from loadtest.sim import simulate; print(simulate(7, 'heavy', 'write-through').digest)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "4242"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == a.digest
    assert simulate(8, "heavy", "write-through").digest != a.digest


def first_violation(profile: str, mode: str, seeds: int = 30) -> tuple[str, str] | None:
    for seed in range(seeds):
        r = simulate(seed, profile, mode)
        if not r.ok:
            return r.invariant, r.detail
    return None


def test_a_release_that_does_not_write_is_caught(monkeypatch):
    """A simulator that cannot fail is worthless: plant a bug (the source of a move
    freezes its keys but skips the flush) and the history check must report it."""
    persist = Node.persist

    def no_flush(self, ak, epoch=None, owner=None):
        if owner is not None and owner != self.node_id:  # the flush for the new owner
            return Persisted.OK
        return persist(self, ak, epoch, owner)

    monkeypatch.setattr(Node, "persist", no_flush)
    found = first_violation("none", "handoff")
    assert found is not None and found[0] == "exactly-once", found


def test_an_ack_before_the_write_is_caught(monkeypatch):
    """Plant: write-through acknowledges a message without writing it first."""

    def process_unwritten(self, session, msg):
        ak = self.keys[session.key]
        if session.inbox.accept(msg.seq):
            self.app.on_message(ak.ctx, session, msg.data)
            ak.dirty = True
            if session.wire is not None:
                session.wire.wake()

    monkeypatch.setattr(Node, "process", process_unwritten)
    found = first_violation("default", "write-through")
    assert found is not None and found[0] == "exactly-once", found
    assert "acknowledged" in found[1]


def test_output_before_the_group_commit_is_caught(monkeypatch):
    """Plant: write-through lets a connection write (acks, replies) before the journal
    entry of what they report is committed."""
    monkeypatch.setattr(Node, "output_held", lambda self, session, wire: False)
    found = first_violation("default", "write-through")
    assert found is not None and found[0] == "exactly-once", found


def test_a_resume_after_lost_state_is_caught(monkeypatch):
    """Plant: a node that lost state resumes the session anyway, as if the client had seen
    only what the node still holds."""
    attach = Node.attach

    def pretending(self, key, epoch, hello, wire):
        s = self.activate(key, epoch).sessions.get(hello.sid) if hello.sid else None
        if s is not None:
            hello = Hello(hello.sid, min(hello.last, s.sent_bound()), min(hello.ack, s.inbox.last))
        return attach(self, key, epoch, hello, wire)

    monkeypatch.setattr(Node, "attach", pretending)
    found = first_violation("default", "handoff")
    assert found is not None and found[0] == "no-silent-rollback", found


# --------------------------------------------------------------------------- regressions
# Each bug the simulator found in the cores: the seed that found it, replayed. With the
# fix undone (monkeypatched back) the seed must still break its invariant, so a change of
# the simulator that stops it from reaching the bug fails here instead of going unseen.


def undo_claim(monkeypatch):
    """Taking a key writes nothing (before: "Node: claim a key in the store ...")."""
    persist = Node.persist

    def no_claim(self, ak, epoch=None, owner=None):
        if epoch is None and self.keys.get(ak.ctx.key) is not ak:  # the claim in activate()
            return Persisted.OK
        return persist(self, ak, epoch, owner)

    monkeypatch.setattr(Node, "persist", no_claim)


def undo_bound_in_the_store(monkeypatch):
    """The resume bound is not stored: a node that loads a session takes the outbox as
    loaded for it (the first form of the fix, in memory only)."""

    def to_state(self):
        return {"in": self.inbox.last, "out": self.outbox.to_state()}

    monkeypatch.setattr("backend.node.Session.to_state", to_state)


def undo_lease_check_in_memory(monkeypatch):
    """A key in memory is attached to without the serving rule."""
    activate = Node.activate

    def lenient(self, key, epoch):
        ak = self.keys.get(key)
        if ak is not None and not ak.frozen:
            ak.epoch = max(ak.epoch, epoch)
            return ak
        return activate(self, key, epoch)

    monkeypatch.setattr(Node, "activate", lenient)


def undo_resume_bound(monkeypatch):
    """A hello is checked against the outbox as it is now."""
    monkeypatch.setattr("backend.node.Session.sent_bound", lambda self: self.outbox.last_seq)


def undo_activation_check(monkeypatch):
    """Activation checks the lease and the releases only, not the table."""
    activate = Node.activate

    def lease_and_releases_only(self, key, epoch):
        if not self.serving():
            raise NotOwner("not serving")
        if key not in self.keys and self.released_epoch(key) >= epoch:
            raise NotOwner("handed off")
        self.serving_epoch = lambda key, claimed=None: claimed  # trust the upgrade's check
        try:
            return activate(self, key, epoch)
        finally:
            del self.serving_epoch

    monkeypatch.setattr(Node, "activate", lease_and_releases_only)


def undo_register_again(monkeypatch):
    """The agent only logs a control error."""
    received = ControlAgent.received

    def log_only(self, now, msg):
        return [] if isinstance(msg, cp.ControlError) else received(self, now, msg)

    monkeypatch.setattr(ControlAgent, "received", log_only)


def undo_release_once(monkeypatch):
    """A release order writes every time, whatever the table says since."""

    def every_time(self, epoch, targets):
        flushed, errors = 0, []
        for unit, dst in targets:
            self.released[unit] = max(self.released.get(unit, 0), epoch)
            for ak in self.keys_in([unit]):
                ak.frozen = True
                result = self.persist(ak, epoch, dst)
                if result is Persisted.OK:
                    flushed += 1
                else:
                    errors.append(f"{ak.ctx.key}: {result.value}")
        return flushed, "; ".join(errors)[:200]

    monkeypatch.setattr(Node, "release", every_time)


def undo_lease_margin(monkeypatch):
    """The lease's margin is its fraction only: 0.6 s of a 3 s lease."""
    monkeypatch.setattr("backend.control_agent.LEASE_CHECK_S", 0.0)


def undo_orphans(monkeypatch):
    """Units of a node gone stay with it."""
    monkeypatch.setattr(EmbeddedDirectory, "orphaned", lambda self: [])


def replays(monkeypatch, undo, seed, profile, mode, invariant):
    assert simulate(seed, profile, mode).ok
    undo(monkeypatch)
    r = simulate(seed, profile, mode)
    assert (r.ok, r.invariant) == (False, invariant), (r.invariant, r.detail)


def test_seed_30_a_woken_stale_owner_cannot_overwrite_the_new_owners_key(monkeypatch):
    """Found by seed 4 (default, checkpoint) of the simulator as it then was (seed 5 here
    until the first table followed the nodes' capacities)."""
    replays(monkeypatch, undo_claim, 30, "heavy", "handoff", "single-owner")


def test_seed_232_a_reloaded_room_resumes_no_member_that_saw_lost_messages(monkeypatch):
    """Found by seed 232 (light, checkpoint) of the simulator as it then was."""
    replays(monkeypatch, undo_resume_bound, 232, "heavy", "checkpoint", "no-silent-rollback")


def test_seed_49_the_resume_bound_survives_a_handoff_after_lost_state(monkeypatch):
    """Found by seed 539 (heavy, checkpoint) of the simulator as it then was (559 before
    the first table followed the nodes' capacities)."""
    replays(monkeypatch, undo_bound_in_the_store, 49, "heavy", "checkpoint", "no-silent-rollback")


def test_seed_320_a_node_past_its_lease_takes_no_session_for_a_key_in_memory(monkeypatch):
    """Found by seed 500 (heavy, checkpoint) of the simulator as it then was."""
    replays(monkeypatch, undo_lease_check_in_memory, 320, "heavy", "checkpoint", "single-owner")


def test_seed_53_units_of_the_last_node_gone_find_a_new_owner(monkeypatch):
    """Found by seed 382 (heavy, handoff) of the simulator as it then was (41 before the
    first table followed the nodes' capacities)."""
    replays(monkeypatch, undo_orphans, 53, "heavy", "write-through", "availability")


def test_seed_48_a_lost_registration_is_sent_again(monkeypatch):
    """Found by seed 2 (adversarial control links at 20 %, handoff)."""
    replays(monkeypatch, undo_register_again, 48, "adversarial", "handoff", "availability")


def test_seed_769_a_release_acts_once_and_never_after_its_move(monkeypatch):
    """Found by seed 1031 (adversarial, checkpoint) of the simulator as it then was (seed
    207 here until the first table followed the nodes' capacities)."""
    replays(monkeypatch, undo_release_once, 769, "adversarial", "checkpoint", "single-owner")


def test_seed_308_a_node_cut_off_stops_before_its_keys_are_given_away(monkeypatch):
    """Found by seed 115 (heavy, handoff) of the simulator as it then was."""
    replays(monkeypatch, undo_lease_margin, 308, "heavy", "handoff", "single-owner")


def undo_release_version(monkeypatch):
    """A release does not say which table it was planned on: the source acts at once."""
    monkeypatch.setattr(
        ControlCore,
        "_release_order",
        lambda self, rec: cp.Release(rec.id, rec.epoch, rec.targets),
    )


def test_seed_7674_a_release_waits_for_the_table_it_was_planned_on(monkeypatch):
    """Found by seed 7674 (adversarial, checkpoint) of the 20,000-seed run."""
    replays(monkeypatch, undo_release_version, 7674, "adversarial", "checkpoint", "availability")
