from clientlib.kernel.routing import NUM_SLOTS
from gateway.controlplane.directory import EmbeddedDirectory


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_leases_restart_and_retry_after(tmp_path):
    clock = Clock()
    d = EmbeddedDirectory(tmp_path, lease_s=3.0, clock=clock)
    for i in (1, 2, 3):
        d.register(f"n{i}", ("127.0.0.1", 9000 + i), 100.0)
    assert d.assign_unowned() == NUM_SLOTS
    counts = [d.table.owners.count(f"n{i}") for i in (1, 2, 3)]
    assert max(counts) - min(counts) <= 1
    # a restarted gateway gets the same table and moves nothing
    again = EmbeddedDirectory(tmp_path, lease_s=3.0, clock=clock)
    assert again.table.owners == d.table.owners and again.epoch == d.epoch
    assert again.address("n2") == ("127.0.0.1", 9002)
    # n3 stops renewing: clients are told to come back when its lease is out
    clock.t += 1.0
    d.renew("n1")
    d.renew("n2")
    assert d.retry_after("n3") == 3  # 2 s left + half a tick, rounded up
    clock.t += 2.5
    assert d.expire() == ["n3"]
    moved = d.spread(d.units_owned_by("n3"), [n.id for n in d.live()])
    assert "n3" not in d.table.owners
    assert abs(len(moved["n1"]) - len(moved["n2"])) <= 1  # spread evenly
    assert d.retry_after("n3") == 1
