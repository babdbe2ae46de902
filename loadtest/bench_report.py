"""The benchmarks' tables in ``docs/benchmarks.md``: each run rewrites its own block
(between ``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->``) with the exact
command, the machine, the date and the load average it started under."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["block_name", "command_of", "write_markdown"]


def block_name(args: argparse.Namespace) -> str:
    if getattr(args, "systems", None):
        return f"{args.what}-{'-'.join(args.systems)}"
    if getattr(args, "durability", None):
        return f"{args.what}-durability" + ("-baseline" if args.baseline else "")
    if getattr(args, "baseline", None):
        return f"{args.what}-baseline"
    if getattr(args, "workers", 1) > 1:
        return f"{args.what}-workers"
    return str(args.what)


def command_of(args: argparse.Namespace) -> str:
    cmd = f"python -m loadtest bench {args.what} --duration {args.duration:g} --conns {args.conns}"
    if args.what == "relay":
        cmd += f" --idle-conns {args.idle_conns}"
        if args.payload != [64]:
            cmd += " --payload " + ",".join(str(p) for p in args.payload)
    if args.pairs > 1:
        cmd += f" --pairs {args.pairs}"
    if getattr(args, "workers", 1) > 1:
        cmd += f" --workers {args.workers}"
    if getattr(args, "client_procs", 1) > 1:
        cmd += f" --client-procs {args.client_procs}"
    if getattr(args, "baseline", None):
        cmd += f" --baseline {args.baseline}"
    if getattr(args, "systems", None):
        cmd += f" --systems {','.join(args.systems)}"
    if getattr(args, "durability", None):
        cmd += f" --durability {','.join(args.durability)}"
        if args.per_key != [1, 10, 100]:
            cmd += " --per-key " + ",".join(str(k) for k in args.per_key)
    return cmd


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def _cell(r: dict[str, Any], key: str, ratio: bool = True) -> str:
    v = r.get(key)
    if v is None:
        return "–"
    text = f"{v:g}" if isinstance(v, float) else str(v)
    q = r.get(f"{key}_ratio")
    return f"{text} ({q:.2f}×)" if ratio and q is not None else text


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| system | payload | CPU µs / round trip | CPU ratio per pair | of which user µs "
        "| RSS KiB / idle conn | msgs/s | p50 µs | p99 µs | p99.9 µs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_pair = ", ".join(f"{x:.2f}" for x in r.get("cpu_us_per_rt_ratios", [])) or "–"
        lines.append(
            f"| {r['system']} | {_size(r['payload'])} | {_cell(r, 'cpu_us_per_rt')} | {per_pair} "
            f"| {_cell(r, 'user_us_per_rt')} | {_cell(r, 'rss_kib_per_conn')} "
            f"| {_cell(r, 'msgs_per_s')} | {_cell(r, 'p50_us')} "
            f"| {_cell(r, 'p99_us')} | {_cell(r, 'p999_us', ratio=False)} |"
        )
    return lines


def write_markdown(
    path: Path,
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    reference: str,
    load: tuple[float, float, float],
    started: float,
) -> None:
    from loadtest.bench import machine

    name = block_name(args)
    pairs = max((r.get("pairs", 1) for r in rows), default=1)
    lines = [
        f"<!-- bench:{name}:start -->",
        f"Command: `{command_of(args)}`  ",
        f"Machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} (start); load "
        f"average at start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}  ",
        f"Figures: medians over {pairs} run(s) per system; ratios (×): the median of the "
        f"per-pair ratios to **{reference}**",
        "",
        *table(rows),
        f"<!-- bench:{name}:end -->",
    ]
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start_m, end_m = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    if start_m in text and end_m in text:
        text = text[: text.index(start_m)] + block + text[text.index(end_m) + len(end_m) :]
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)
