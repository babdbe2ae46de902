"""Run one scenario (or the off/on comparison) and write the report folder."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from loadtest.cluster import Hosts
from loadtest.report import plot, table, write_json
from loadtest.run import Runner, Target
from loadtest.scenario import Scenario
from loadtest.stats import IMBALANCE_BACK, P99_BACK, results


def check(r: dict[str, Any]) -> list[str]:
    """Failures that make the run exit non-zero."""
    bad = []
    promised = r["durability"] == "write-through" or r.get("killed") is None
    if promised and (r["lost"] or r["duplicated"] or r["reordered"]):
        bad.append(
            f"delivery not exact: lost {r['lost']}, duplicated {r['duplicated']}, "
            f"reordered {r['reordered']}"
        )
    if r["clients"] and r["throughput_msgs_per_s"] == 0:
        bad.append("no messages came back")
    return bad


def rescue_verdict(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The hotspot's targets, met or missed (printed; a noisy machine may miss them, so
    they do not fail the run): off, p99 during >= 5x steady; on, from 10 s after the
    onset p99 <= 1.5x steady and max/mean <= 1.25; both, nothing lost or duplicated."""
    out = []
    for name, r in runs.items():
        res = r.get("rescue")
        if not res:
            continue
        if not r["rebalance"]:
            ratio = res["during_over_steady"]
            checks = [(f"p99 during / steady = {ratio} (target >= 5)", (ratio or 0) >= 5)]
        else:
            ratio, imb = res["settled_over_steady"], res["imbalance_settled_max"]
            checks = [
                (
                    f"p99 from onset +10 s / steady = {ratio} (target <= {P99_BACK})",
                    ratio is not None and ratio <= P99_BACK,
                ),
                (
                    f"max/mean from onset +10 s = {imb} (target <= {IMBALANCE_BACK})",
                    imb is not None and imb <= IMBALANCE_BACK,
                ),
            ]
        checks.append(
            (f"lost {r['lost']}, duplicated {r['duplicated']}", not (r["lost"] or r["duplicated"]))
        )
        for text, ok in checks:
            out.append(f"{'met ' if ok else 'MISSED'} {name}: {text}")
    return out


async def run_and_report(sc: Scenario, out: Path, args: argparse.Namespace) -> int:
    target = Target(args.target, args.admin, args.admin_token, args.token) if args.target else None
    variants = (
        [
            ("rebalance-off", dataclasses.replace(sc, rebalance=False)),
            ("rebalance-on", dataclasses.replace(sc, rebalance=True)),
        ]
        if args.compare
        else [("rebalance-" + ("on" if sc.rebalance else "off"), sc)]
    )
    runs: dict[str, dict[str, Any]] = {}
    for name, variant in variants:
        sub = out / name if args.compare else out
        print(f"== {variant.name} ({name}): {variant.describe()}", file=sys.stderr)
        hosts = None
        if args.cluster:
            hosts = Hosts(tag=args.cluster_tag or "", netns=args.cluster_tag is not None)
            if args.cluster_tag:
                hosts.adopt_client()
        data = await Runner(variant, sub, target, quiet=args.quiet, cluster=hosts).run()
        runs[name] = results(data)
        write_json(sub / "results.json", runs[name])
    if args.compare:
        write_json(out / "results.json", runs)
    plot(runs, out / "report.png")
    print(table(runs))
    for line in rescue_verdict(runs):
        print(line)
    print(f"\nreport: {out / 'results.json'}, {out / 'report.png'}")
    failures = [f"{n}: {msg}" for n, r in runs.items() for msg in check(r)]
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0
