"""``python -m loadtest simulate``: run the deterministic simulator over a range of seeds.

Each seed runs under one fault profile and one durability mode: with several of
either, seed ``s`` takes profile ``profiles[s % P]`` and mode
``modes[(s // P) % D]``, so a range covers every combination evenly and a
failing seed is reproduced with its own profile and mode alone. Seeds run in
worker processes; the line on stderr shows seeds done, rate and violations.
The exit status is 1 if any seed broke an invariant.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from backend.config import DURABILITY_MODES
from loadtest.sim.faults import PROFILES
from loadtest.sim.world import Result, simulate

__all__ = ["add_parser", "assign", "main", "run_seeds"]


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "simulate",
        help="deterministic simulation of the whole system over many seeds",
        description="Run the real cores over a simulated network and clock with injected "
        "faults, checking the invariants after every step (docs/reliability.md).",
    )
    s.add_argument("--seeds", default="0:500", help="range START:END (END excluded), or one seed")
    s.add_argument(
        "--faults",
        default="all",
        help=f"profile or comma-separated profiles ({', '.join(PROFILES)}) or 'all'",
    )
    s.add_argument(
        "--durability", default="all", help=f"{' | '.join(DURABILITY_MODES)} | all (or a list)"
    )
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    s.add_argument("--trace", type=int, metavar="SEED", help="print one seed's full trace")
    s.add_argument("--tail", type=int, default=40, help="events shown for a violation")
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.add_argument("--counts", action="store_true", help="print what the seeds went through")


def _choices(value: str, known: list[str] | tuple[str, ...], what: str) -> list[str]:
    picked = list(known) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in picked if v not in known]
    if bad or not picked:
        raise SystemExit(f"loadtest simulate: unknown {what} {bad or value!r} (have {known})")
    return picked


def assign(seed: int, profiles: list[str], modes: list[str]) -> tuple[str, str]:
    """The profile and durability mode a seed runs under (see the module doc)."""
    return profiles[seed % len(profiles)], modes[(seed // len(profiles)) % len(modes)]


def _run(job: tuple[int, str, str]) -> Result:
    seed, profile, mode = job
    res = simulate(seed, profile, mode)
    if res.ok:
        res.tail = []  # only a failure's events travel back
    return res


def run_seeds(
    seeds: range, profiles: list[str], modes: list[str], workers: int
) -> Iterator[Result]:
    """Results as they come (any order)."""
    jobs = [(s, *assign(s, profiles, modes)) for s in seeds]
    if workers <= 1:
        yield from map(_run, jobs)
        return
    ctx = multiprocessing.get_context("spawn")  # no state shared with the parent
    with ctx.Pool(workers) as pool:
        yield from pool.imap_unordered(_run, jobs, chunksize=4)


def _parse_seeds(text: str) -> range:
    if ":" in text:
        a, b = text.split(":", 1)
        return range(int(a), int(b))
    return range(int(text), int(text) + 1)


def _report(res: Result, tail: int) -> str:
    lines = [
        f"VIOLATION seed {res.seed} ({res.profile}, {res.durability}): {res.invariant}",
        f"  {res.detail}",
        f"  scenario: {res.scenario}",
        f"  last {min(tail, len(res.tail))} events:",
        *(f"    {line}" for line in res.tail[-tail:]),
        f"  reproduce: python -m loadtest simulate --seeds {res.seed} --faults {res.profile} "
        f"--durability {res.durability} --trace {res.seed}",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    profiles = _choices(args.faults, list(PROFILES), "fault profile")
    modes = _choices(args.durability, DURABILITY_MODES, "durability mode")
    if args.trace is not None:
        profile, mode = assign(args.trace, profiles, modes)
        res = simulate(args.trace, profile, mode, full_trace=True)
        print("\n".join(res.tail))
        print(f"seed {res.seed} ({profile}, {mode}): {'ok' if res.ok else 'VIOLATION'}")
        print(f"trace hash {res.digest} ({res.steps} steps, {res.sim_time:.1f} s simulated)")
        return 0 if res.ok else 1
    seeds = _parse_seeds(args.seeds)
    live = not args.quiet and sys.stderr.isatty()
    started = time.monotonic()
    done, bad, last_line = 0, [], 0.0
    digests: dict[int, str] = {}
    counts: dict[str, int] = {}
    slowest = 0.0
    for res in run_seeds(seeds, profiles, modes, args.workers):
        done += 1
        digests[res.seed] = res.digest
        for k, v in res.counts.items():
            counts[k] = counts.get(k, 0) + v
        if res.ok:
            slowest = max(slowest, res.heal_time)
        else:
            bad.append(res)
            note = f"[simulate] seed {res.seed} ({res.profile}, {res.durability}): {res.invariant}"
            print(f"\r{note}" if live else note, file=sys.stderr)
        now = time.monotonic()
        if not args.quiet and (now - last_line > (0.2 if live else 10.0) or done == len(seeds)):
            last_line = now
            rate = done / max(now - started, 1e-9)
            eta = (len(seeds) - done) / rate if rate else 0.0
            line = (
                f"[simulate] {done}/{len(seeds)} seeds  {rate:.1f}/s  "
                f"violations {len(bad)}  eta {eta:.0f}s"
            )
            print(f"\r{line}" if live else line, end="" if live else "\n", file=sys.stderr)
    if live:
        print(file=sys.stderr)
    wall = time.monotonic() - started
    for res in sorted(bad, key=lambda r: r.seed)[:3]:
        print(_report(res, args.tail))
    if len(bad) > 3:
        print(f"... and {len(bad) - 3} more: seeds {sorted(r.seed for r in bad)[3:50]}")
    if args.counts:
        print("what the seeds went through (totals):")
        for k in sorted(counts):
            print(f"  {k:40} {counts[k]}")
    run_hash = hashlib.blake2b(
        "".join(digests[s] for s in sorted(digests)).encode(), digest_size=16
    ).hexdigest()
    print(
        f"{done} seeds ({', '.join(profiles)} x {', '.join(modes)}) in {wall:.1f} s "
        f"({done / max(wall, 1e-9):.1f} seeds/s, {args.workers} workers): "
        f"{len(bad)} violations; slowest finish after the heal {slowest:.1f} s; "
        f"run hash {run_hash}"
    )
    return 1 if bad else 0
