"""``python -m backend APP``: run a stateful backend node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import time
from typing import Any

import structlog
import uvloop

from backend.apps import APPS
from backend.config import BackendConfig
from backend.control_agent import ControlAgent
from backend.control_client import ControlClient, LoopProbe
from backend.etcd_link import EtcdLink
from backend.load import LoadMeter
from backend.node import Node
from backend.redis_store import open_store
from backend.server import BackendServer
from clientlib.io.etcd_transport import etcd_client
from clientlib.kernel.etcd import parse_endpoints
from clientlib.kernel.etcd_layout import Layout
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
        epilog="example: BACKEND_CREDENTIAL=$(python -m gateway credential node-1 "
        "--control-secret s3cret) python -m backend counter --listen 127.0.0.1:9101 "
        "--node-id node-1 --control ws://127.0.0.1:9090/v1/control",
    )
    p.add_argument("app", nargs="?", choices=sorted(APPS), help="example app to run")
    p.add_argument("--config", help="TOML file with backend settings")
    add_setting_flags(p, BackendConfig, "BACKEND_")
    return p.parse_args(argv)


async def serve(cfg: BackendConfig) -> None:
    node_id = cfg.node_id
    app = APPS[cfg.app]()
    store = open_store(cfg.store)
    meter = LoadMeter(
        cfg.capacity,
        high=cfg.high_water,
        low=cfg.low_water,
        target_ms=cfg.pressure_target_ms,
        # With a service queue, its speed is known until measured: 1 / service time.
        prior=1e6 / cfg.service_time_us if cfg.service_time_us else 1000.0,
        queued=cfg.service_time_us > 0,
        # The service queue's busy time is exact; CPU time on a shared machine jitters, so
        # without a queue a configured capacity is taken as it is.
        measure=cfg.service_time_us > 0 or cfg.capacity is None,
    )
    node = Node(app, store, meter, cfg)
    server = BackendServer(
        node,
        max_message=cfg.max_message,
        credential=cfg.credential,
        direct=cfg.direct,
        node_held_bytes=cfg.node_held_bytes,
        max_items=cfg.max_message_items,
        service_time_us=cfg.service_time_us,
    )
    host, port = parse_hostport(cfg.listen, "listen")
    tls = None
    if cfg.tls_cert and cfg.tls_key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    await server.start(host, port, tls=tls)
    log.info(
        "backend_listening",
        app=cfg.app,
        node=node_id,
        address=f"{host}:{server.port}",
        durability=cfg.durability,
        capacity=cfg.capacity,
        service_time_us=cfg.service_time_us,
        direct=cfg.direct,
    )
    loop_probe = LoopProbe()
    loop_probe.start()

    def probe() -> tuple[float, float]:
        """Loop lag, and busy: the service queue's when there is one, else CPU time."""
        lag, cpu = loop_probe.read()
        queue = server.busy()
        return lag, cpu if queue is None else queue

    control: ControlClient | EtcdLink | None = None
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []
    if cfg.etcd:
        agent = ControlAgent(
            node,
            meter,
            advertise=parse_hostport(cfg.advertise or f"{host}:{server.port}", "advertise"),
            probe=probe,
        )
        client, transport = etcd_client(
            parse_endpoints(cfg.etcd),
            ca_file=cfg.etcd_ca_file,
            user=cfg.etcd_user,
            password=cfg.etcd_password,
        )
        control = EtcdLink(agent, client, Layout(cfg.etcd_prefix), lease_s=cfg.etcd_lease_s)
        log.info("etcd_directory", endpoints=client.endpoints, prefix=cfg.etcd_prefix)
        tasks.append(loop.create_task(control.run()))
    elif cfg.control:
        assert cfg.credential is not None
        agent = ControlAgent(
            node,
            meter,
            advertise=parse_hostport(cfg.advertise or f"{host}:{server.port}", "advertise"),
            probe=probe,
        )
        control_tls = ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else None
        control = ControlClient(agent, cfg.control, cfg.credential, tls=control_tls)
        tasks.append(loop.create_task(control.run()))

    async def housekeeping() -> None:
        while True:
            await asyncio.sleep(1.0)
            node.sweep(time.monotonic())
            server.sweep()

    tasks.append(loop.create_task(housekeeping()))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Graceful exit: freeze and write everything, let the control plane reassign it (the
    # table that follows closes each session with 4000 and a window), then close the rest.
    log.info("backend_stopping", keys=len(node.keys), sessions=node.session_count)
    node.stop()
    handed_off = await control.leave() if control is not None else False
    if isinstance(control, EtcdLink):
        await control.close()  # the lease back: this node's keys go at once
    hint = CloseHint(window_ms=node.moved_window_ms(node.session_count)).encode()
    node.close_all(CloseCode.MOVED if handed_off else CloseCode.SERVICE_RESTART, hint)
    await server.close_all(CloseCode.MOVED if handed_off else CloseCode.SERVICE_RESTART, hint)
    for t in tasks:
        t.cancel()
    if isinstance(control, EtcdLink):
        await asyncio.gather(*tasks, return_exceptions=True)
        await transport.close()
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
