"""Turn a run's raw records into figures: latency windows, imbalance, rebalance time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from loadtest.verify import ClientLog, verify
from loadtest.worker import new_hist

if TYPE_CHECKING:
    from loadtest.run import RunData


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
    if onset is not None and end is not None:
        windows["before"] = pcts(merge([p for p in d.progress if p["t"] < onset]))
        windows["during"] = pcts(merge([p for p in d.progress if onset <= p["t"] < end]))
        windows["after"] = pcts(merge([p for p in d.progress if p["t"] >= end]))
    series = [
        (s["t"], float(s["imbalance"]))
        for s in d.samples
        if s.get("imbalance") is not None and 0 <= s["t"] <= sc.duration
    ]
    limit = 1 + sc.tolerance
    # Rates ramp up from zero with the connections; judge balance once they settled.
    warmup = sc.clients / sc.ramp_per_s + 3.0
    ttr = None
    imb_after = None
    if onset is not None:
        ttr = time_to_rebalance(series, onset, limit)
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
        "capacity_per_node": round(d.capacity or 0, 1),
        "hot_keys": d.hot_keys,
        "hot_node": d.hot_node,
        "killed": d.killed,
        "hotspot": [onset, end] if onset is not None else None,
        "throughput_msgs_per_s": round(received / sc.duration, 1),
        "latency": windows,
        "p99_ms": windows["overall"]["p99_ms"],
        "imbalance_series": [[round(t, 2), v] for t, v in series],
        "imbalance_max_before": round(
            max((v for t, v in series if warmup <= t < (onset or sc.duration)), default=1.0), 3
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
                    n: {"util": v.get("util"), "rate": v.get("rate"), "pressure": v.get("pressure")}
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
