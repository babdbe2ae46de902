"""Routes read from the control plane's state file: the other workers' :class:`RouteSource`.

With ``--workers N`` worker 0 runs the control plane, whose directory replaces
``state_dir/directory.json`` atomically (write, fsync, rename) on every change.
The other workers route from a copy of that file: :meth:`FileRouteSource.refresh`
(every ~100 ms) re-reads it when its modification time, size or inode changed,
and keeps the last good copy when a read fails. Worker 0 also writes whether the
fleet sheds new upgrades to ``state_dir/admission.json``, so every worker sheds.

A rename is atomic, so a reader sees the old file or the new one, never half of
one; a failure here means something else (a full disk, a hand edit) and is
counted and logged, not fatal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from clientlib.kernel.routing import Route, SlotTable

__all__ = ["ADMISSION_FILE", "DIRECTORY_FILE", "FileRouteSource", "write_admission"]

log = structlog.get_logger("gateway.routes")

DIRECTORY_FILE = "directory.json"  # written by gateway.controlplane.directory.FileStorage
ADMISSION_FILE = "admission.json"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def write_admission(state_dir: str | Path, retry_after: int | None) -> None:
    """Worker 0: whether new upgrades are shed (a Retry-After in seconds) or not (None),
    replaced atomically for the other workers."""
    path = Path(state_dir) / ADMISSION_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"retry_after": retry_after}))
    os.replace(tmp, path)


class FileRouteSource:
    """A :class:`~gateway.route_source.RouteSource` over the control plane's state file."""

    def __init__(
        self,
        state_dir: str | Path,
        *,
        lease_s: float = 3.0,
        reloaded: Callable[[bool], None] | None = None,
    ):
        self.path = Path(state_dir) / DIRECTORY_FILE
        self.admission_path = Path(state_dir) / ADMISSION_FILE
        self.lease_s = lease_s
        self.reloaded = reloaded or (lambda ok: None)
        self.table = SlotTable.empty()
        self.epoch = 0
        self.addrs: dict[str, tuple[str, int]] = {}
        self.shed_retry: int | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._admission_stamp: tuple[int, int, int] | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Re-read what changed on disk; True if the routes did."""
        self._refresh_admission()
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return False
        try:
            obj = orjson.loads(self.path.read_bytes())
            table = SlotTable.from_json(obj["table"])
            addrs = {str(n["id"]): (str(n["host"]), int(n["port"])) for n in obj["nodes"]}
            epoch = int(obj["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._stamp = stamp  # the same bad file is not read again; a new one will be
            log.warning("route_file_unreadable", path=str(self.path), error=str(exc)[:200])
            self.reloaded(False)
            return False
        self._stamp = stamp
        self.table, self.addrs, self.epoch = table, addrs, epoch
        self.reloaded(True)
        return True

    def _refresh_admission(self) -> None:
        stamp = _stamp(self.admission_path)
        if stamp == self._admission_stamp:
            return
        self._admission_stamp = stamp
        try:
            retry = orjson.loads(self.admission_path.read_bytes())["retry_after"]
            self.shed_retry = int(retry) if retry is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            self.shed_retry = None  # no file (worker 0 never shed) or unreadable: admit

    def admission(self) -> int | None:
        return self.shed_retry

    def ready(self) -> bool:
        return bool(self.addrs) and None not in self.table.owners

    # ------------------------------------------------------------------ RouteSource

    def route(self, key: str) -> Route | None:
        return self.table.route(key)

    def address(self, node: str) -> tuple[str, int] | None:
        return self.addrs.get(node)

    def fallback(self, key: str, exclude: set[str]) -> str | None:
        return None  # the owner is authoritative, as in the control plane's own directory

    def retry_after(self, node: str) -> int | None:
        # The lease is worker 0's to watch: at worst a full lease, and a tick to reassign.
        return math.ceil(self.lease_s + 0.5)

    def version(self) -> int:
        return self.table.version

    def view(self) -> dict[str, Any]:
        counts: dict[str | None, int] = {}
        for o in self.table.owners:
            counts[o] = counts.get(o, 0) + 1
        return {
            "mode": "control-plane (worker: routes from the state file)",
            "epoch": self.epoch,
            "nodes": [
                {"id": n, "address": f"{h}:{p}", "slots": counts.get(n, 0)}
                for n, (h, p) in self.addrs.items()
            ],
        }
