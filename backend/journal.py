"""Write-through's journal: what each commit changed on a key, and its replay. Sans-I/O.

In write-through mode a key is stored as its last full **record** (the app state
and every session's replay buffer, as :meth:`backend.node.Node.persist` writes it)
followed by a **journal**: one entry per commit that changed the key since. An
entry holds only what changed:

``{"st": <the app state, dumped>, "s": {sid: op, ...}}``

with one ``op`` per session the commit touched (a message from it, frames queued
for it, an ack from it, a new session) and ``None`` for a session that ended. An
op is ``[in, acked, sent, first, [frame, ...]]``: the session's highest processed
inbox seq, the highest outbox seq its client acknowledged, the highest seq that
may have reached the client, and the frames queued for it since the last entry
(JSON texts numbered ``first``, ``first + 1``, ...). Sessions the commit did not
touch are not in it, so an entry's size does not depend on the number of sessions
on the key nor on their unacknowledged windows.

:func:`replay` applies entries to a decoded record: the result is the record the
node would have written at the last commit (``tests/backend/test_journal.py``
checks this for random sequences of messages, acks, joins and ends).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["current", "encode_entry", "replay"]

# [in, acked, sent, first, frames] or None: the session ended.
SessionOp = list[Any] | None


def encode_entry(state: Any, ops: dict[str, SessionOp]) -> bytes:
    """One journal entry: the app state (JSON-able) and the touched sessions' ops."""
    return orjson.dumps({"st": state, "s": ops})


def replay(record: dict[str, Any], entries: Iterable[bytes]) -> dict[str, Any]:
    """Apply journal entries, oldest first, to a decoded record (in place; returned)."""
    sessions: dict[str, Any] = record.setdefault("sessions", {})
    for raw in entries:
        entry = orjson.loads(raw)
        record["state"] = entry["st"]
        for sid, op in entry["s"].items():
            if op is None:
                sessions.pop(sid, None)
                continue
            inbox, acked, sent, first, frames = op
            s = sessions.get(sid)
            if s is None:
                s = sessions[sid] = {"in": 0, "out": {"next_seq": first, "items": []}, "sent": 0}
            out = s["out"]
            items: list[list[Any]] = out["items"]
            items.extend([first + i, text] for i, text in enumerate(frames))
            out["next_seq"] = first + len(frames)
            drop = 0
            while drop < len(items) and items[drop][0] <= acked:
                drop += 1
            if drop:
                del items[:drop]
            s["in"] = inbox
            s["sent"] = sent
    return record


def current(blob: bytes, journal: Iterable[bytes] = ()) -> dict[str, Any]:
    """A stored key as one decoded record: its last record with its journal replayed."""
    record: dict[str, Any] = orjson.loads(blob)
    return replay(record, journal)
