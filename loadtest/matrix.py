"""``loadtest matrix``: a few hotspot shapes, each run with rebalancing off and on, one table.

Every shape runs on backends with service queues (finite capacity), sized so the
fleet's mean utilization is ``util`` (0.45): the node the hotspot lands on is
past its capacity, and a balanced assignment (when one exists) is not. The
table goes to the terminal and, between ``<!-- bench:matrix:start -->`` and
``<!-- bench:matrix:end -->``, to ``docs/benchmarks.md`` with the command, the
machine and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.report import write_json
from loadtest.scenario import Scenario

__all__ = ["SHAPES", "Shape", "add_parser", "main", "scenario_of", "table"]


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    backends: int
    hot_keys: int
    share: float
    capacities: str  # multipliers, one per backend
    util: float = 0.45  # the fleet's mean utilization the service times are sized for


SHAPES: tuple[Shape, ...] = (
    Shape("3 nodes x1, 1 key with 60 % (unsplittable)", 3, 1, 0.6, "1,1,1", util=0.5),
    Shape("4 nodes x1, 4 hot keys with 50 %", 4, 4, 0.5, "1,1,1,1"),
    Shape("4 nodes x1/x0.5/x2/x1, 3 hot keys with 50 %", 4, 3, 0.5, "1,0.5,2,1"),
    Shape("6 nodes x0.5-x2, 2 hot keys with 30 %", 6, 2, 0.3, "0.5,2,1,0.5,2,1"),
)


def scenario_of(shape: Shape, *, clients: int, rate: float, rebalance: bool) -> Scenario:
    """The shape as a scenario: service times for a mean utilization of ``shape.util``."""
    mults = [float(x) for x in shape.capacities.split(",")]
    demand = clients * rate
    # Mean utilization = demand / sum(capacities), capacity_i = m_i / service time.
    service_us = shape.util * sum(mults) / demand * 1e6
    return Scenario(
        name=shape.name,
        backends=shape.backends,
        clients=clients,
        workers=min(os.cpu_count() or 1, 2),
        rate=rate,
        duration=40.0,
        hotspot_at=15.0,
        hotspot_duration=20.0,
        hotspot_share=shape.share,
        hotspot_keys=shape.hot_keys,
        hotspot_quiet=0.0,
        service_time_us=round(service_us, 1),
        capacities=shape.capacities,
        rebalance=rebalance,
        drain_s=20.0,
    )


def row(shape: Shape, r: dict[str, Any]) -> dict[str, Any]:
    rescue = r.get("rescue") or {}
    return {
        "shape": shape.name,
        "rebalance": "on" if r["rebalance"] else "off",
        "time_to_rebalance_s": r["time_to_rebalance_s"],
        "imbalance_peak": r["imbalance_peak"],
        "imbalance_settled_max": rescue.get("imbalance_settled_max"),
        "p99_steady_ms": rescue.get("p99_steady_ms"),
        "p99_during_ms": rescue.get("p99_during_ms"),
        "p99_settled_ms": rescue.get("p99_settled_ms"),
        "p99_back_s": rescue.get("p99_back_s"),
        "moves": r["moves"],
        "moved_load": r["moved_load"],
        "unsplittable": [u["key"] for u in r.get("unsplittable", [])],
        "lost": r["lost"],
        "duplicated": r["duplicated"],
    }


def _v(x: Any) -> str:
    return "–" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| shape | rebalance | time to rebalance (s) | max/mean peak; max from onset +10 s "
        "| p99 steady / during / from +10 s (ms) | p99 back at (s) | moves (msgs/s moved) "
        "| unsplittable | lost / dup |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['rebalance']} | {_v(r['time_to_rebalance_s'])} "
            f"| {_v(r['imbalance_peak'])}; {_v(r['imbalance_settled_max'])} "
            f"| {_v(r['p99_steady_ms'])} / {_v(r['p99_during_ms'])} / "
            f"{_v(r['p99_settled_ms'])} | {_v(r['p99_back_s'])} "
            f"| {r['moves']} ({_v(r['moved_load'])}) | {len(r['unsplittable'])} "
            f"| {r['lost']} / {r['duplicated']} |"
        )
    return lines


def write_markdown(path: Path, lines: list[str], command: str, started: float, load: Any) -> None:
    from loadtest.bench import machine

    start_m, end_m = "<!-- bench:matrix:start -->", "<!-- bench:matrix:end -->"
    block = "\n".join(
        [
            start_m,
            f"Command: `{command}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} (start); load "
            f"average at start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}",
            "",
            *lines,
            end_m,
        ]
    )
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start_m in text and end_m in text:
        text = text[: text.index(start_m)] + block + text[text.index(end_m) + len(end_m) :]
    else:
        text = text.rstrip() + "\n\n## matrix\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)


def add_parser(sub: Any) -> None:
    m = sub.add_parser(
        "matrix",
        help="hotspot shapes, rebalancing off and on, one table",
        description=__doc__,
    )
    m.add_argument("--clients", type=int, default=300, help="clients per run")
    m.add_argument("--rate", type=float, default=2.0, help="messages/s per client")
    m.add_argument(
        "--shapes", help="comma-separated indexes into the shapes (0-based; default all)"
    )
    m.add_argument("--out", help="output folder (default runs/matrix-<time>)")
    m.add_argument(
        "--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)"
    )


def main(args: argparse.Namespace) -> int:
    from loadtest.main_run import check
    from loadtest.run import Runner
    from loadtest.stats import results

    picks = [int(i) for i in args.shapes.split(",")] if args.shapes else range(len(SHAPES))
    shapes = [SHAPES[i] for i in picks]
    out = Path(args.out or f"runs/matrix-{time.strftime('%Y%m%d-%H%M%S')}")
    started, load = time.time(), os.getloadavg()
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for i, shape in enumerate(shapes):
        for rebalance in (False, True):
            sc = scenario_of(shape, clients=args.clients, rate=args.rate, rebalance=rebalance)
            sub = out / f"{i}-{'on' if rebalance else 'off'}"
            print(f"== {sc.describe()}", file=sys.stderr)
            data = asyncio.run(Runner(sc, sub, quiet=True).run())
            r = results(data)
            write_json(sub / "results.json", r)
            rows.append(row(shape, r))
            failures += [f"{shape.name} ({'on' if rebalance else 'off'}): {f}" for f in check(r)]
            print("\n".join(table(rows)[-1:]), file=sys.stderr)
    lines = table(rows)
    write_json(out / "matrix.json", rows)
    print("\n".join(lines))
    command = f"python -m loadtest matrix --clients {args.clients} --rate {args.rate:g}"
    if args.shapes:
        command += f" --shapes {args.shapes}"
    if args.write:
        write_markdown(Path(args.write), lines, command, started, load)
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0
