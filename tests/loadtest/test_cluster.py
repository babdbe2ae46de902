"""A short run of the cluster topology (3 etcd members, 3 gateways, 3 backends, Redis,
each on a host of its own) with three faults: the leading gateway killed, an etcd member
killed, a backend cut off from etcd. Loopback addresses stand in for hosts where network
namespaces cannot be made (the partition is then skipped, and the run says so)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadtest.cluster import namespaces_missing
from loadtest.services import missing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        bool(missing("etcd") or missing("redis-server")),
        reason=str(missing("etcd") or missing("redis-server")),
    ),
]


def test_cluster_faults(tmp_path):
    proc = subprocess.run(
        [
            *[sys.executable, "-m", "loadtest", "cluster-faults", "--clients", "9"],
            *["--fault", "leader-kill", "--fault", "etcd-member-kill"],
            *["--fault", "backend-partition", "--workdir", str(tmp_path / "c")],
            *["--out", str(tmp_path / "r.json")],
        ],
        capture_output=True,
        text=True,
        timeout=170,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by = {r["fault"]: r for r in rows}
    assert "summary" in by, proc.stderr[-3000:]
    if namespaces_missing() is not None or "loopback" in proc.stderr:
        print(f"hosts were loopback addresses: {proc.stderr.splitlines()[:1]}")
    summary = by["summary"]
    assert (summary["lost"], summary["duplicated"], summary["reordered"]) == (0, 0, 0), rows
    kill = by["leader-kill"]
    assert kill["new_leader"] not in (None, kill["killed"]), kill
    assert kill["resumed_elsewhere"] == kill["clients_on_killed_gateway"], kill
    assert kill["other_clients_disconnected"] == 0, kill
    assert by["etcd-member-kill"]["clients_disconnected"] == 0, by["etcd-member-kill"]
    if "backend-partition" in by:
        cut = by["backend-partition"]
        # The serving rule's order: the node stops before its slots are given away.
        assert cut["stopped_serving_s"] is not None and cut["slots_reassigned_s"] is not None
        assert cut["stopped_serving_s"] < cut["slots_reassigned_s"], cut
        assert cut["rejoined_after_heal_s"] is not None, cut
    else:
        assert "backend-partition" in summary["skipped"]
    assert proc.returncode == 0, proc.stderr[-2000:]
