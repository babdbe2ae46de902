"""The node's side of the control protocol: registration, the lease, releases."""

from __future__ import annotations

import pytest

from backend.control_agent import LEASE_CHECK_S, ControlAgent
from clientlib.kernel import control_protocol as cp
from clientlib.kernel.routing import SlotTable, slot_of
from clientlib.kernel.session_protocol import Hello
from tests.backend.conftest import FakeWire, make_node

pytestmark = pytest.mark.timeout(30)


def agent_for(store, clock) -> ControlAgent:
    node = make_node(store, clock, "a", direct=False, control="ws://x", credential="c")
    return ControlAgent(node, node.meter, advertise=("127.0.0.1", 9000), incarnation="i1")


def test_the_lease_runs_from_when_the_report_was_sent(store, clock):
    agent = agent_for(store, clock)
    (register,) = agent.connected(clock())
    assert isinstance(register, cp.Register) and register.incarnation == "i1"
    agent.received(clock(), cp.TableUpdate(SlotTable.empty()))
    sent_at = clock()
    clock.t += 0.5
    agent.received(clock(), cp.Granted(0, 3000))
    assert agent.registered
    # Never less than the time a node cut off from the plane takes to notice (its
    # housekeeping runs every second between control sessions).
    assert agent.node.lease_until == pytest.approx(sent_at + 3.0 - LEASE_CHECK_S)
    agent.connected(clock())  # a long lease: the fraction is the larger margin
    agent.received(clock(), cp.Granted(0, 30_000))
    assert agent.node.lease_until == pytest.approx(clock() + 30.0 * (1 - agent.lease_margin))


def test_a_node_cut_off_from_the_plane_stops_before_the_plane_gives_its_keys_away(store, clock):
    """Found by the simulator (an invariant added for it: a running node presumed dead must
    hold no keys by then): the control session dropped, then a partition kept the node from
    opening another; without a session its lease is checked by the housekeeping, once a
    second, and the margin was 0.6 s: the plane gave its keys away while it still held them
    (and had not written them)."""
    agent = agent_for(store, clock)
    node = agent.node
    agent.connected(clock())
    agent.received(clock(), cp.TableUpdate(SlotTable.empty()))
    agent.received(clock(), cp.Granted(0, 3000))
    sent_at = clock()
    worst = node.lease_until + 1.0  # housekeeping just missed the end of the lease
    plane_gives_up = sent_at + 3.0  # at the earliest (it counts from receipt)
    assert worst < plane_gives_up


def test_a_registration_that_never_arrived_is_sent_again(store, clock):
    """Found by the simulator with control messages lost while the session goes on (an
    adversarial superset of TCP): the register was lost, the plane answered every report
    with an error, and the node, never registered, never got a lease again."""
    agent = agent_for(store, clock)
    agent.connected(clock())
    clock.t += 1.0
    (report,) = agent.tick(clock())
    assert isinstance(report, cp.Report)
    again = agent.received(clock(), cp.ControlError("register first"))
    assert [type(m) for m in again] == [cp.Register]
    agent.received(clock(), cp.Granted(0, 3000))
    assert agent.registered
    assert agent.received(clock(), cp.ControlError("something else")) == []  # registered


def test_a_release_waits_for_the_table_it_was_planned_on(store, clock):
    """Found by the simulator (seed 7674, adversarial, checkpoint): the table that gave a
    key its own unit on this node was lost on the way; a release of the key's slot then
    flushed the key for the slot's new owner at a newer epoch, and the key, still routed
    here, was refused by the store on this node forever (a 4003 loop)."""
    agent = agent_for(store, clock)
    node = agent.node
    agent.connected(clock())
    old = SlotTable.empty()
    for s in range(len(old.owners)):
        old.set_slot(s, "a", 1)
    agent.received(clock(), cp.TableUpdate(old))
    agent.received(clock(), cp.Granted(0, 3000))
    node.attach("hot", node.serving_epoch("hot", 2), Hello(None, 0), FakeWire())
    new = old.copy()
    new.set_override("hot", "a", 2)  # this update is the one lost
    unit = ("slot", slot_of("hot"))
    release = cp.Release(1, 3, ((unit, "b"),), new.version)
    assert agent.received(clock(), release) == []  # not acted on, not answered
    assert not node.keys["hot"].frozen and node.released_epoch("hot") < 0
    # The plane sends the table, then the release again.
    agent.received(clock(), cp.TableUpdate(new))
    (answer,) = agent.received(clock(), release)
    assert isinstance(answer, cp.Released) and answer.error == ""
    assert not node.keys["hot"].frozen  # its own unit stays: not part of the slot
    loaded = store.load("hot")
    assert loaded is None or (loaded.epoch, loaded.owner) != (3, "b")
