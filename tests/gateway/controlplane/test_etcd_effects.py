"""The leader's effects as etcd writes, and a standby's admission rule: pure, no etcd."""

from __future__ import annotations

import pytest

from clientlib.kernel import control_protocol as cp
from clientlib.kernel.etcd import Delete, KeyValue, Put
from clientlib.kernel.etcd_layout import Layout
from clientlib.kernel.routing import SlotTable
from gateway.controlplane.core import Broadcast, Disconnect, MoveFinished, Send
from gateway.controlplane.etcd_effects import StagedStorage, effect_ops
from gateway.controlplane.etcd_standby import StandbyAdmission, standby_status, watched_loads
from gateway.controlplane.planner import PlannerConfig

pytestmark = pytest.mark.timeout(10)
L = Layout("/c")


def test_effects_become_orders_and_a_finished_move_cleans_up():
    release = cp.Release(4, 17, ((("slot", 1), "n2"),))
    orders: dict[int, str] = {}
    ops, done = effect_ops(
        [
            Send("n1", release),
            Send("n1", cp.TableUpdate(SlotTable.empty(8))),
            Send("n1", cp.Granted(3, 3000)),
            Broadcast(cp.TableUpdate(SlotTable.empty(8))),
            Disconnect("n3", "dead"),
            Send("n3", cp.Left()),
        ],
        L,
        orders,
    )
    assert ops == [Put(L.release("n1", 4), cp.encode(release)), Put(L.left("n3"), b'{"t":"left"}')]
    assert orders == {4: "n1"} and done == []
    ops, done = effect_ops([MoveFinished(4, True, "done")], L, orders)
    assert ops == [Delete(L.release("n1", 4)), Delete(L.released("n1", 4))]
    assert done == [MoveFinished(4, True, "done")] and orders == {}


def test_staged_storage_keeps_only_the_latest_until_taken():
    s = StagedStorage(b"old")
    assert s.read() == b"old" and s.take() is None
    s.write(b"a")
    s.write(b"b")
    assert s.take() == b"b" and s.take() is None and s.read() == b"b"


def _load(node: str, rate: float, capacity: float = 100.0) -> KeyValue:
    load = cp.LoadReport(rate, capacity, rate / capacity, False, 1, 1, {}, (), 10.0)
    report = cp.Report(1, load, 0)
    return KeyValue(L.load(node), cp.encode(report))


def test_a_standby_sheds_by_the_planners_rule_with_hysteresis():
    adm = StandbyAdmission(PlannerConfig())
    loads = {"n1": _load("n1", 97), "n2": _load("n2", 96)}
    assert adm.update(watched_loads(loads)) is True
    assert adm.update(watched_loads({"n1": _load("n1", 90), "n2": _load("n2", 90)})) is True
    assert adm.update(watched_loads({"n1": _load("n1", 80), "n2": _load("n2", 80)})) is False
    st = standby_status({"n1": _load("n1", 50), "bad": KeyValue(L.load("bad"), b"junk")})
    assert set(st["nodes"]) == {"n1"} and st["nodes"]["n1"]["util"] == 0.5
