"""Turn a run's raw records into figures: latency windows, imbalance, rebalance time."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from loadtest.verify import ClientLog, verify
from loadtest.worker import new_hist

if TYPE_CHECKING:
    from loadtest.run import RunData

#: The rescue's targets: from RESCUE_S after the onset, p99 within P99_BACK x the steady
#: p99 and max/mean utilization within IMBALANCE_BACK.
RESCUE_S = 10.0
P99_BACK = 1.5
IMBALANCE_BACK = 1.25


def merge(records: list[dict[str, Any]]) -> HdrHistogram:
    h = new_hist()
    for r in records:
        if r.get("hist"):
            h.decode_and_add(r["hist"])
    return h


def pcts(h: HdrHistogram) -> dict[str, float]:
    n = h.get_total_count()
    if not n:
        return {
            "count": 0,
            "p50_ms": 0.0,
            "p90_ms": 0.0,
            "p99_ms": 0.0,
            "p999_ms": 0.0,
            "max_ms": 0.0,
        }
    return {
        "count": n,
        **{
            f"p{k}_ms": round(h.get_value_at_percentile(v) / 1000, 2)
            for k, v in (("50", 50), ("90", 90), ("99", 99), ("999", 99.9))
        },
        "max_ms": round(h.get_max_value() / 1000, 2),
    }


def summarize(records: list[dict[str, Any]], window: float = 2.0) -> dict[str, float]:
    """Rate and p99 over the progress records of the last ``window`` seconds (live line)."""
    if not records:
        return {"rate": 0.0, "p99_ms": 0.0}
    h = merge(records)
    n = h.get_total_count()
    return {"rate": n / window, "p99_ms": h.get_value_at_percentile(99) / 1000 if n else 0.0}


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p / 100 * len(s)))], 1)


def time_to_rebalance(
    series: list[tuple[float, float]], onset: float, limit: float
) -> float | None:
    """Seconds from ``onset`` until the imbalance stays below ``limit`` for the rest of
    the series (None if it never does, or never settles)."""
    after = [(t, v) for t, v in series if t >= onset]
    if not after:
        return None
    settle: float | None = None
    for t, v in after:
        if v >= limit:
            settle = None
        elif settle is None:
            settle = t
    if settle is None:
        return None
    return round(max(settle - onset, 0.0), 2)


def results(d: RunData) -> dict[str, Any]:
    sc = d.scenario
    logs: list[ClientLog] = []
    resumes: list[float] = []
    errors: list[str] = []
    not_resumed = 0
    for f in d.finals:
        for c in f["clients"]:
            logs.append(ClientLog(c["key"], c["sent"], tuple(tuple(x) for x in c["replies"])))
            resumes += c["resumes_ms"]
            not_resumed += c["not_resumed"]
            if c["error"]:
                errors.append(c["error"])
    verdict = verify(logs, d.final_counts)
    onset = sc.hotspot_at
    end = onset + sc.hotspot_duration if onset is not None else None
    windows: dict[str, dict[str, float]] = {"overall": pcts(merge(d.progress))}
    # Rates ramp up from zero with the connections; judge balance once they settled.
    warmup = sc.steady_from
    steady_from = (sc.steady_window() or (warmup, warmup))[0]
    if onset is not None and end is not None:
        prog = d.progress
        steady = sc.steady_window() or (onset, onset)
        windows["ramp"] = pcts(merge([p for p in prog if p["t"] < steady[0]]))
        # The steady state before the hotspot: after the start-up ramp and its rounds.
        windows["before"] = pcts(merge([p for p in prog if steady[0] <= p["t"] < onset]))
        windows["during"] = pcts(merge([p for p in prog if onset <= p["t"] < end]))
        # What clients feel from 10 s after the onset on: the rescue's target window.
        settled = onset + RESCUE_S
        windows["settled"] = pcts(merge([p for p in prog if settled <= p["t"] < end]))
        windows["after"] = pcts(merge([p for p in prog if p["t"] >= end]))
    series = [
        (s["t"], float(s["imbalance"]))
        for s in d.samples
        if s.get("imbalance") is not None and 0 <= s["t"] <= sc.duration
    ]
    limit = 1 + sc.tolerance
    ttr = None
    imb_after = None
    if onset is not None:
        # Balanced again while the hotspot lasts (its end is another change of load).
        ttr = time_to_rebalance([(t, v) for t, v in series if t < (end or math.inf)], onset, limit)
        if ttr is not None:
            imb_after = round(max((v for t, v in series if t >= onset + ttr), default=1.0), 3)
    last = d.samples[-1] if d.samples else {}
    rejected = last.get("rejected", {})
    received = sum(len(lg.replies) for lg in logs)
    return {
        "scenario": sc.name,
        "rebalance": sc.rebalance,
        "durability": sc.durability,
        "clients": len(logs),
        "description": sc.describe(),
        "scenario_settings": {
            k: v for k, v in dataclasses.asdict(sc).items() if k not in ("name", "description")
        },
        "capacity_per_node": d.capacity,
        "hot_keys": d.hot_keys,
        "hot_node": d.hot_node,
        "killed": d.killed,
        "hotspot": [onset, end] if onset is not None else None,
        "ramp_end_s": round(warmup, 2),
        "steady_window": sc.steady_window(),
        "throughput_msgs_per_s": round(received / sc.duration, 1),
        "latency": windows,
        "p99_ms": windows["overall"]["p99_ms"],
        "imbalance_series": [[round(t, 2), v] for t, v in series],
        "imbalance_max_before": round(
            max((v for t, v in series if steady_from <= t < (onset or sc.duration)), default=1.0),
            3,
        ),
        # The imbalance that stays: mean over the hotspot, after 10 s to react.
        "imbalance_during_mean": (
            round(sum(during) / len(during), 3)
            if onset is not None
            and end is not None
            and (during := [v for t, v in series if onset + 10 <= t < end])
            else None
        ),
        "imbalance_peak": round(max((v for t, v in series if t >= warmup), default=1.0), 3),
        "imbalance_max_after": imb_after,
        "imbalance_final": series[-1][1] if series else None,
        "time_to_rebalance_s": ttr,
        "tolerance": sc.tolerance,
        "moves": last.get("moves", 0),
        "moved_load": last.get("moved_load", 0.0),
        "isolated": last.get("isolated", []),
        "unsplittable": unsplittable(d.samples, onset, end),
        "rescue": rescue(windows, series, d.progress, onset, end),
        "reconnects": len(resumes),
        "not_resumed": not_resumed,
        "reconnect_resume_p50_ms": percentile(resumes, 50),
        "reconnect_resume_p99_ms": percentile(resumes, 99),
        "admission_rejections": int(sum(v for k, v in rejected.items() if k == "503")),
        "rejected_by_status": rejected,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "reordered": verdict.reordered,
        "verdict": verdict.to_json(),
        "client_errors": errors[:20],
        "events": d.events,
        "node_series": [
            {
                "t": round(s["t"], 2),
                "nodes": {
                    n: {
                        k: v.get(k)
                        for k in ("util", "rate", "capacity", "pressure", "score", "delay_ms")
                    }
                    for n, v in s.get("nodes", {}).items()
                },
                "moves": s.get("moves", 0),
                "shedding": s.get("shedding", False),
            }
            for s in d.samples
        ],
        "latency_series": latency_series(d.progress),
        "move_history": [{**m, "t": round(m["at"] - d.t0, 2)} for m in d.moves],
    }


def unsplittable(
    samples: list[dict[str, Any]], onset: float | None, end: float | None
) -> list[dict[str, Any]]:
    """Keys the control plane reported unsplittable during the hotspot (the whole run if
    there is none), each with its highest reported rate."""
    seen: dict[str, dict[str, Any]] = {}
    for s in samples:
        if onset is not None and end is not None and not onset <= s["t"] < end:
            continue
        for u in s.get("unsplittable", []):
            if u["key"] not in seen or u["rate"] > seen[u["key"]]["rate"]:
                seen[u["key"]] = u
    return sorted(seen.values(), key=lambda u: -float(u["rate"]))


def rescue(
    windows: dict[str, dict[str, float]],
    series: list[tuple[float, float]],
    progress: list[dict[str, Any]],
    onset: float | None,
    end: float | None,
) -> dict[str, Any] | None:
    """The hotspot's figures against the steady state before it: how much worse p99 got,
    whether it came back within RESCUE_S (p99 <= 1.5x steady, imbalance <= 1.25), and
    the first second after the rise whose p99 was back."""
    if onset is None or end is None or not windows["before"]["count"]:
        return None
    steady = windows["before"]["p99_ms"]
    during = windows["during"]["p99_ms"]
    settled = windows["settled"]["p99_ms"]
    settled_imb = [v for t, v in series if onset + RESCUE_S <= t < end]
    # The first second after the rise in which p99 is back within P99_BACK x steady.
    recovered = None
    rose = False
    for t, _, p99, _ in latency_series(progress):
        if not onset <= t < end:
            continue
        if p99 > P99_BACK * steady:
            rose = True
        elif rose:
            recovered = t + 1.0  # the end of that second
            break
    return {
        "p99_steady_ms": steady,
        "p99_during_ms": during,
        "p99_settled_ms": settled,
        "during_over_steady": round(during / steady, 2) if steady else None,
        "settled_over_steady": round(settled / steady, 2) if steady else None,
        "imbalance_settled_max": round(max(settled_imb), 3) if settled_imb else None,
        "p99_back_s": round(recovered - onset, 1) if recovered is not None else None,
    }


def latency_series(progress: list[dict[str, Any]], step: float = 1.0) -> list[list[float]]:
    """[t, p50_ms, p99_ms, msgs/s] per ``step`` seconds."""
    buckets: dict[int, list[dict[str, Any]]] = {}
    for p in progress:
        if p.get("final"):
            continue
        buckets.setdefault(int(p["t"] // step), []).append(p)
    out = []
    for b in sorted(buckets):
        h = merge(buckets[b])
        n = h.get_total_count()
        if n:
            out.append(
                [
                    b * step,
                    h.get_value_at_percentile(50) / 1000,
                    h.get_value_at_percentile(99) / 1000,
                    n / step,
                ]
            )
    return out
