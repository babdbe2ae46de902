"""``python -m loadtest``: hotspot simulations and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from clientlib.kernel.settings import ConfigError
from loadtest.scenario import builtin_names, load_scenario


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Simulate hotspots against the gateway and benchmark it.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "run",
        help="run a scenario and write its report",
        description="Start a local gateway and backends (or --target an "
        "existing gateway), drive clients, verify delivery, report.",
    )
    r.add_argument(
        "--scenario",
        default="default",
        help=f"built-in name ({', '.join(builtin_names())}) or a TOML file",
    )
    r.add_argument("--out", help="output folder (default runs/<scenario>-<time>)")
    r.add_argument("--backends", type=int)
    r.add_argument("--clients", type=int)
    r.add_argument("--workers", type=int, help="client processes")
    r.add_argument("--duration", type=float, help="seconds")
    r.add_argument("--rate", type=float, help="messages/s per client")
    r.add_argument("--zipf", type=float, help="key popularity exponent (0 = uniform)")
    r.add_argument("--hotspot-at", type=float, help="seconds; negative: no hotspot")
    r.add_argument("--hotspot-share", type=float, help="share of traffic on the hot keys")
    r.add_argument("--hotspot-keys", type=int)
    r.add_argument("--hotspot-duration", type=float, help="seconds")
    r.add_argument(
        "--service-time-us",
        type=float,
        help="finite capacity: µs per message on a x1 backend (0: no service queue)",
    )
    r.add_argument(
        "--capacities", help="backends' capacities relative to x1, comma-separated (1,0.5,2,1)"
    )
    r.add_argument("--durability", choices=["handoff", "checkpoint", "write-through"])
    r.add_argument("--rebalance", choices=["on", "off"])
    r.add_argument(
        "--compare",
        action="store_true",
        help="run with rebalancing off, then on, and report side by side",
    )
    r.add_argument("--target", help="ws:// URL of an existing gateway (no local topology)")
    r.add_argument("--admin", help="admin URL of the --target gateway, for the load view")
    r.add_argument("--admin-token")
    r.add_argument("--token", help="client token for the --target gateway")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.add_argument(
        "--cluster",
        action="store_true",
        help="a cluster topology: 3 etcd members, 3 gateways, the backends and Redis, each "
        "on a host of its own (network namespaces; loopback addresses where none can be made)",
    )
    r.add_argument("--cluster-tag", help=argparse.SUPPRESS)
    b = sub.add_parser(
        "bench",
        help="benchmarks that write docs/benchmarks.md",
        description="Side-by-side benchmarks (see loadtest/bench.py). With --pairs the "
        "systems alternate, the order reversed each round, and the tables quote the "
        "medians of the per-pair ratios.",
    )
    b.add_argument("what", choices=["relay", "backend", "slow-reader", "fanin"])
    b.add_argument("--duration", type=float, default=10.0, help="seconds per system")
    b.add_argument("--conns", type=int, default=50, help="concurrent echo connections")
    b.add_argument("--idle-conns", type=int, default=8000, help="idle connections for memory")
    b.add_argument(
        "--pairs", type=int, default=1, help="rounds of the systems, order swapped each round"
    )
    b.add_argument(
        "--payload",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[64],
        help="message sizes in bytes, comma-separated (relay; e.g. 64,4096,65536)",
    )
    b.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout: its gateway (or backend) is run with this Python from DIR "
        "and compared with this one's in alternating pairs",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=1,
        help="relay: the gateway with --workers 1 and N, nginx with 1 and N worker_processes",
    )
    b.add_argument("--client-procs", type=int, default=1, help="load generator processes")
    b.add_argument("--profile", metavar="FILE", help="py-spy collapsed stacks of the gateway")
    b.add_argument(
        "--profile-system",
        metavar="NAME",
        help="profile this row's process instead of the gateway's (e.g. "
        "'write-through, 100 sessions/key')",
    )
    b.add_argument(
        "--durability",
        type=lambda v: ["handoff", "checkpoint", "write-through"] if v == "all" else v.split(","),
        help="backend: the echo backend in these durability modes (comma-separated, or "
        "'all'), each compared with handoff at the same sessions per key",
    )
    b.add_argument(
        "--per-key",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 10, 100],
        help="backend --durability: sessions per routing key, comma-separated",
    )
    b.add_argument("--sources", type=int, default=16, help="fanin: client source addresses")
    b.add_argument("--rate", type=float, default=1.0, help="fanin: messages/s per connection")
    b.add_argument(
        "--systems",
        type=lambda v: v.split(","),
        help="relay, fanin: the systems to alternate, comma-separated (direct, gateway, "
        "nginx, naive-relay, splice; fanin's default: gateway,nginx)",
    )
    b.add_argument(
        "--write", default="docs/benchmarks.md", help="markdown file to update ('' to skip)"
    )
    from loadtest.attack import add_parser as add_attack_parser
    from loadtest.cluster_faults import add_parser as add_cluster_parser
    from loadtest.netfault import add_parser

    add_parser(sub)
    add_attack_parser(sub)
    from loadtest.attack_backend import add_parser as add_backend_attack_parser

    add_backend_attack_parser(sub)
    add_cluster_parser(sub)
    from loadtest.simulate import add_parser as add_simulate

    add_simulate(sub)
    from loadtest.matrix import add_parser as add_matrix

    add_matrix(sub)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if getattr(args, "cluster", False) and args.cluster_tag is None:
        # Re-run on a client host of a new set of namespaces (None: loopback fallback).
        from loadtest.cluster import on_client_host

        rc = on_client_host(list(sys.argv[1:] if argv is None else argv), "--cluster-tag")
        if rc is not None:
            sys.exit(rc)
    if args.cmd == "netfault":
        from loadtest.netfault import FAULTS
        from loadtest.netfault import main as netfault_main

        args.fault = args.fault or list(FAULTS)
        sys.exit(netfault_main(args))
    if args.cmd == "attack-backend":
        from loadtest.attack_backend import main as backend_attack_main

        sys.exit(backend_attack_main(args))
    if args.cmd == "cluster-faults":
        from loadtest.cluster_faults import FAULTS as CLUSTER_FAULTS
        from loadtest.cluster_faults import main as cluster_main

        args.fault = args.fault or list(CLUSTER_FAULTS)
        sys.exit(cluster_main(args))
    if args.cmd == "attack":
        from loadtest.attack import main as attack_main

        sys.exit(attack_main(args))
    if args.cmd == "simulate":
        from loadtest.simulate import main as simulate_main

        sys.exit(simulate_main(args))
    if args.cmd == "matrix":
        from loadtest.matrix import main as matrix_main

        sys.exit(matrix_main(args))
    if args.cmd == "bench":
        from loadtest.bench import run_bench

        sys.exit(run_bench(args))
    overrides: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "backends",
            "clients",
            "workers",
            "duration",
            "rate",
            "zipf",
            "hotspot_at",
            "hotspot_share",
            "hotspot_keys",
            "hotspot_duration",
            "service_time_us",
            "capacities",
            "durability",
        )
    }
    if args.rebalance:
        overrides["rebalance"] = args.rebalance == "on"
    try:
        sc = load_scenario(args.scenario, overrides)
    except ConfigError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        sys.exit(2)
    out = Path(args.out or f"runs/{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from loadtest.main_run import run_and_report

    sys.exit(asyncio.run(run_and_report(sc, out, args)))


if __name__ == "__main__":
    main()
