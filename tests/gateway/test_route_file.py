"""FileRouteSource: routes from the control plane's state file, the last good copy kept."""

from __future__ import annotations

import os

import pytest

from gateway.controlplane.directory import EmbeddedDirectory
from gateway.route_file import FileRouteSource, write_admission

pytestmark = pytest.mark.timeout(30)


def bump(path) -> None:
    """A new modification time even on a coarse clock."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_follows_the_directory_and_keeps_the_last_good_copy(tmp_path):
    results: list[bool] = []
    d = EmbeddedDirectory(tmp_path, lease_s=3.0)
    d.register("a", ("127.0.0.1", 9001), 1000.0)
    d.register("b", ("127.0.0.1", 9002), 1000.0)
    d.assign_unowned()  # saves
    src = FileRouteSource(tmp_path, reloaded=results.append)
    assert src.ready() and results == [True]
    assert src.address("a") == ("127.0.0.1", 9001)
    route = src.route("room:1")
    assert route is not None and route.node in ("a", "b")
    other = "b" if route.node == "a" else "a"
    d.assign(("key", "room:1"), other, d.next_epoch())
    d.save()
    assert src.refresh() and src.route("room:1").node == other  # type: ignore[union-attr]
    assert src.version() == d.table.version
    assert not src.refresh()  # nothing changed on disk
    (tmp_path / "directory.json").write_text("{not json")
    bump(tmp_path / "directory.json")
    assert not src.refresh() and results[-1] is False
    assert src.route("room:1").node == other  # type: ignore[union-attr]  # the last good copy


def test_admission_follows_worker_0(tmp_path):
    src = FileRouteSource(tmp_path)
    assert src.admission() is None and not src.ready()  # no file yet: admit, not ready
    write_admission(tmp_path, 2)
    src.refresh()
    assert src.admission() == 2
    write_admission(tmp_path, None)
    src.refresh()
    assert src.admission() is None
