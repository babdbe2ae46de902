"""``python -m backend APP``: run a stateful backend node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any

import structlog
import uvloop

from backend.apps import APPS
from backend.config import BackendConfig
from backend.control_client import ControlClient, LoopProbe
from backend.load import LoadMeter
from backend.node import Node
from backend.server import BackendServer
from backend.store import SQLiteStore
from clientlib.kernel.logsetup import configure_logging
from clientlib.kernel.session_protocol import CloseCode, CloseHint
from clientlib.kernel.settings import (
    ConfigError,
    add_setting_flags,
    build_config,
    parse_hostport,
)

log = structlog.get_logger("backend")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m backend",
        description="Run a stateful WebSocket backend node. Every setting is also read "
        "from BACKEND_<NAME> and from the --config TOML file (keys are the setting names).",
        epilog="example: python -m backend counter --listen 127.0.0.1:9101 --node-id node-1 "
        "--control ws://127.0.0.1:9090/v1/control --control-secret s3cret",
    )
    p.add_argument("app", nargs="?", choices=sorted(APPS), help="example app to run")
    p.add_argument("--config", help="TOML file with backend settings")
    add_setting_flags(p, BackendConfig, "BACKEND_")
    return p.parse_args(argv)


async def serve(cfg: BackendConfig) -> None:
    node_id = cfg.node_id
    app = APPS[cfg.app]()
    store = SQLiteStore(cfg.store)
    meter = LoadMeter(cfg.capacity, high=cfg.high_water, low=cfg.low_water)
    node = Node(app, store, meter, cfg)
    server = BackendServer(node, max_message=cfg.max_message)
    host, port = parse_hostport(cfg.listen, "listen")
    await server.start(host, port)
    log.info(
        "backend_listening",
        app=cfg.app,
        node=node_id,
        address=f"{host}:{server.port}",
        durability=cfg.durability,
        capacity=cfg.capacity,
    )
    probe = LoopProbe()
    probe.start()
    control: ControlClient | None = None
    tasks: list[asyncio.Task[Any]] = []
    if cfg.control:
        assert cfg.control_secret is not None
        control = ControlClient(
            node,
            cfg.control,
            cfg.control_secret,
            advertise=cfg.advertise or f"{host}:{server.port}",
            loop_probe=probe,
        )
        tasks.append(asyncio.get_running_loop().create_task(control.run()))

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(1.0)
            node.sweep(time.monotonic())

    tasks.append(asyncio.get_running_loop().create_task(housekeeping()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Graceful exit: freeze and flush everything, let the control plane reassign it,
    # then tell clients to reconnect (to the new owners) spread over a window.
    log.info("backend_stopping", keys=len(node.keys), sessions=node.session_count)
    for ak in node.keys.values():
        ak.frozen = True
    node.flush_all()
    handed_off = await control.leave() if control is not None else False
    hint = CloseHint(window_ms=node.moved_window_ms(node.session_count)).encode()
    code = CloseCode.MOVED if handed_off else CloseCode.SERVICE_RESTART
    await server.close_all(code, hint)
    for t in tasks:
        t.cancel()
    with contextlib.suppress(Exception):
        assert server.server is not None
        server.server.close()
        await asyncio.wait_for(server.server.wait_closed(), 3)
    store.close()
    log.info("backend_stopped", handed_off=handed_off)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        cfg = build_config(BackendConfig, file=args.config, env_prefix="BACKEND_", flags=flags)
        configure_logging(cfg.log_level)
    except (ConfigError, ValueError) as exc:
        print(f"backend: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    uvloop.run(serve(cfg))


if __name__ == "__main__":
    main()
