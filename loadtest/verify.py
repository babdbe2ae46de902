"""Exact delivery accounting for a run with the counter app. Pure.

Every client numbers its messages n = 1..N; the counter app answers each with
``{"n": n, "count": c}``, where c is the key's counter after processing it.
The backend's final count per key is the ground truth of what was processed.

* client → server: processed(key) vs sent(key): fewer is loss, more is duplication;
* server → client: per client, every n must come back exactly once, in order;
  every counter value of a key must reach exactly one client.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class ClientLog:
    key: str
    sent: int  # messages 1..sent were sent
    replies: tuple[tuple[int, int], ...]  # (n, count) in arrival order


@dataclass(frozen=True, slots=True)
class Verdict:
    sent: int
    replies: int
    lost: int  # messages with no reply (either direction)
    duplicated: int  # replies or processings beyond one per message
    reordered: int  # replies arriving with a smaller n than one before
    c2s_lost: int | None  # from ground truth, when known
    c2s_duplicated: int | None
    s2c_lost: int
    s2c_duplicated: int

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.reordered == 0

    def to_json(self) -> dict[str, int | bool | None]:
        d: dict[str, int | bool | None] = dict(asdict(self))
        d["exact"] = self.exact
        return d


def verify(logs: list[ClientLog], final_counts: dict[str, int] | None = None) -> Verdict:
    sent = replies = lost = dup_n = reordered = 0
    sent_by_key: Counter[str] = Counter()
    counts_by_key: dict[str, Counter[int]] = {}
    for log in logs:
        sent += log.sent
        sent_by_key[log.key] += log.sent
        replies += len(log.replies)
        seen: set[int] = set()
        last = 0
        cc = counts_by_key.setdefault(log.key, Counter())
        for n, count in log.replies:
            if n in seen:
                dup_n += 1
            seen.add(n)
            if n < last:
                reordered += 1
            last = max(last, n)
            cc[count] += 1
        lost += sum(1 for n in range(1, log.sent + 1) if n not in seen)
    count_dups = sum(c - 1 for cc in counts_by_key.values() for c in cc.values() if c > 1)
    c2s_lost = c2s_dup = None
    s2c_lost = 0
    if final_counts is not None:
        c2s_lost = c2s_dup = 0
        for key, n_sent in sent_by_key.items():
            processed = final_counts.get(key, 0)
            c2s_lost += max(0, n_sent - processed)
            c2s_dup += max(0, processed - n_sent)
            s2c_lost += max(0, min(processed, n_sent) - len(counts_by_key.get(key, {})))
    else:
        s2c_lost = lost
    return Verdict(
        sent=sent,
        replies=replies,
        lost=lost,
        duplicated=max(dup_n + count_dups, c2s_dup or 0),
        reordered=reordered,
        c2s_lost=c2s_lost,
        c2s_duplicated=c2s_dup,
        s2c_lost=s2c_lost,
        s2c_duplicated=dup_n,
    )
