"""Write a run's report: results.json, a table on the terminal, report.png (matplotlib)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson


def write_json(path: Path, obj: Any) -> None:
    path.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def table(runs: dict[str, dict[str, Any]]) -> str:
    """A side-by-side text table of the headline figures of one or more runs."""
    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("throughput (msgs/s)", lambda r: r["throughput_msgs_per_s"]),
        ("latency p50 (ms)", lambda r: r["latency"]["overall"]["p50_ms"]),
        ("latency p99 (ms)", lambda r: r["latency"]["overall"]["p99_ms"]),
        ("latency p99.9 (ms)", lambda r: r["latency"]["overall"]["p999_ms"]),
        (
            "p99 steady/during/after (ms)",
            lambda r: "/".join(
                str(r["latency"].get(w, {}).get("p99_ms", "-"))
                for w in ("before", "during", "after")
            ),
        ),
        ("p99 during / steady", lambda r: r["rescue"]["during_over_steady"]),
        ("p99 from onset +10 s / steady", lambda r: r["rescue"]["settled_over_steady"]),
        ("p99 back within 1.5x at (s)", lambda r: r["rescue"]["p99_back_s"]),
        ("imbalance max from onset +10 s", lambda r: r["rescue"]["imbalance_settled_max"]),
        ("imbalance before hotspot", lambda r: r["imbalance_max_before"]),
        ("imbalance peak", lambda r: r["imbalance_peak"]),
        ("imbalance mean, hotspot +10 s", lambda r: r["imbalance_during_mean"]),
        ("time to rebalance (s)", lambda r: r["time_to_rebalance_s"]),
        ("imbalance max after", lambda r: r["imbalance_max_after"]),
        ("imbalance final", lambda r: r["imbalance_final"]),
        ("moves (moved msgs/s)", lambda r: f"{r['moves']} ({r['moved_load']})"),
        ("reconnects", lambda r: r["reconnects"]),
        (
            "reconnect→resume p50/p99 (ms)",
            lambda r: f"{r['reconnect_resume_p50_ms']}/{r['reconnect_resume_p99_ms']}",
        ),
        ("admission rejections", lambda r: r["admission_rejections"]),
        (
            "unsplittable keys",
            lambda r: ", ".join(u["key"] for u in r.get("unsplittable", [])) or "none",
        ),
        (
            "lost / duplicated / reordered",
            lambda r: f"{r['lost']}/{r['duplicated']}/{r['reordered']}",
        ),
    ]
    names = list(runs)
    w0 = max(len(r[0]) for r in rows)
    widths = [max(14, len(n)) for n in names]
    out = [" " * w0 + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))]
    for label, fn in rows:
        cells = []
        for n, w in zip(names, widths, strict=True):
            try:
                v = fn(runs[n])
            except (KeyError, TypeError):
                v = "-"
            cells.append(str("-" if v is None else v).rjust(w))
        out.append(label.ljust(w0) + "  " + "  ".join(cells))
    return "\n".join(out)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(runs)
    fig, axes = plt.subplots(3, cols, figsize=(7 * cols, 10), squeeze=False, sharex="col")
    for c, (name, r) in enumerate(runs.items()):
        ax_load, ax_imb, ax_lat = axes[0][c], axes[1][c], axes[2][c]
        series = r["node_series"]
        ts = [s["t"] for s in series]
        nodes = sorted({n for s in series for n in s["nodes"]})
        for n in nodes:
            ax_load.plot(ts, [(s["nodes"].get(n) or {}).get("util") for s in series], label=n)
        prev = 0
        for s in series:
            if s["moves"] > prev:
                ax_load.axvline(s["t"], color="grey", alpha=0.4, lw=0.8)
                prev = s["moves"]
        ax_load.set_ylabel("utilization (demand / capacity)")
        ax_load.set_title(
            f"{r['scenario']} — rebalance {'on' if r['rebalance'] else 'off'} ({name})"
        )
        ax_load.legend(loc="upper left", fontsize=8)
        # From the end of the start-up ramp: the first reports' ratios mean nothing.
        imb = [p for p in r["imbalance_series"] if p[0] >= r.get("ramp_end_s", 0.0)]
        ax_imb.plot([p[0] for p in imb], [p[1] for p in imb], color="black")
        ax_imb.axhline(
            1 + r["tolerance"],
            color="red",
            ls="--",
            lw=0.8,
            label=f"1 + tolerance ({1 + r['tolerance']:.2f})",
        )
        ax_imb.set_ylabel("imbalance (max/mean)")
        ax_imb.legend(loc="upper left", fontsize=8)
        lat = r["latency_series"]
        ax_lat.plot([p[0] for p in lat], [p[1] for p in lat], label="p50")
        ax_lat.plot([p[0] for p in lat], [p[2] for p in lat], label="p99")
        ax_lat.set_yscale("log")
        ax_lat.set_ylabel("latency (ms, from intended send)")
        ax_lat.set_xlabel("time (s)")
        ax_lat.legend(loc="upper left", fontsize=8)
        for ax in (ax_load, ax_imb, ax_lat):
            for t, _label in r.get("events", []):
                ax.axvline(t, color="red", alpha=0.6, lw=1)
            hs = r.get("hotspot")
            if hs:
                ax.axvspan(hs[0], hs[1], color="orange", alpha=0.1)
    if cols > 1:  # imbalance and latency on one scale across the runs, to compare them
        for row in (1, 2):
            lims = [axes[row][c].get_ylim() for c in range(cols)]
            for c in range(cols):
                axes[row][c].set_ylim(min(lo for lo, _ in lims), max(hi for _, hi in lims))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
