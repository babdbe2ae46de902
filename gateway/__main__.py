"""``python -m gateway``: run the gateway (data plane, admin API, embedded control plane)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from functools import cache, partial

import structlog
import uvloop

from clientlib.io.etcd_transport import etcd_client
from clientlib.kernel.credentials import node_credential
from clientlib.kernel.etcd import parse_endpoints
from clientlib.kernel.etcd_layout import Layout
from clientlib.kernel.logsetup import configure_logging
from clientlib.kernel.settings import (
    ConfigError,
    add_setting_flags,
    build_config,
    parse_hostport,
)
from gateway.admin import AdminAPI, admin_token
from gateway.config import GatewayConfig
from gateway.controlplane.controller import Controller
from gateway.controlplane.core import CoreConfig
from gateway.controlplane.directory import EmbeddedDirectory
from gateway.controlplane.etcd_plane import EtcdController
from gateway.controlplane.planner import PlannerConfig
from gateway.etcd_routes import EtcdMirror, EtcdRoutes
from gateway.metrics import GatewayMetrics
from gateway.route_file import FileRouteSource, write_admission
from gateway.route_source import RouteSource, StaticDirectory
from gateway.server import Gateway
from gateway.workers import supervise

log = structlog.get_logger("gateway")

ROUTE_POLL_S = 0.1  # how soon the other workers follow worker 0's table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Sticky WebSocket gateway: routes each upgrade by its key to the owning "
        "backend and splices bytes. Fronts static backends, or backends that "
        "register with its embedded control plane. Every setting is also read from "
        "GATEWAY_<NAME> and from the --config TOML file (keys are the setting names).",
        epilog="examples: python -m gateway --listen 127.0.0.1:9000 "
        "--static-backend 127.0.0.1:9101 --static-backend 127.0.0.1:9102  |  "
        "GATEWAY_CONTROL_SECRET=… python -m gateway credential NODE_ID (a backend's credential)",
    )
    p.add_argument("--config", help="TOML file with gateway settings")
    add_setting_flags(p, GatewayConfig, "GATEWAY_")
    return p.parse_args(argv)


async def serve(cfg: GatewayConfig, token: str, worker: int = 0) -> None:
    """One gateway process (worker ``worker`` of ``cfg.workers``)."""
    if cfg.workers > 1:
        structlog.contextvars.bind_contextvars(worker=worker)
    metrics = GatewayMetrics()
    directory: RouteSource
    edir: EmbeddedDirectory | None = None
    mirror: EtcdMirror | None = None
    routes: EtcdRoutes | None = None
    watched: FileRouteSource | None = None
    if cfg.static_backend:
        directory = StaticDirectory(cfg.static_backend)
    elif cfg.etcd:
        client, transport = etcd_client(
            parse_endpoints(cfg.etcd),
            ca_file=cfg.etcd_ca_file,
            user=cfg.etcd_user,
            password=cfg.etcd_password,
        )
        mirror = EtcdMirror(client, Layout(cfg.etcd_prefix))
        directory = routes = EtcdRoutes(mirror, lease_s=cfg.lease_s)
        log.info("etcd_directory", endpoints=client.endpoints, prefix=cfg.etcd_prefix)
    elif cfg.control_secret and worker == 0:
        edir = EmbeddedDirectory(cfg.state_dir, lease_s=cfg.lease_s)
        directory = edir
    elif cfg.control_secret:
        watched = FileRouteSource(
            cfg.state_dir,
            lease_s=cfg.lease_s,
            reloaded=lambda ok: metrics.route_reloads.labels("ok" if ok else "failed").inc(),
        )
        directory = watched
    else:
        raise ConfigError(
            "config: give --static-backend HOST:PORT (repeatable) or "
            "--control-secret to let backends register (with --etcd: through etcd)"
        )
    gw = Gateway(cfg, directory, metrics=metrics)
    controller: Controller | None = None
    tasks: list[asyncio.Task[None]] = []
    if mirror is not None and routes is not None:
        assert cfg.control_secret is not None
        controller = EtcdController(
            mirror.client,
            mirror,
            cfg.control_secret,
            gw.metrics,
            gateway_id=cfg.gateway_id,
            admin=cfg.admin_listen,
            election_lease_s=cfg.election_lease_s,
            node_lease_s=cfg.lease_s,
            config=CoreConfig(rebalance=cfg.rebalance),
            planner=PlannerConfig(tolerance=cfg.rebalance_tolerance),
            routes_ready=routes.ready,
        )
        gw.admission = controller.admission
        gw.credential_of = controller.endpoint.credential
        mirror.start()
        controller.start()
    elif edir is not None:
        assert cfg.control_secret is not None
        controller = Controller(
            edir,
            cfg.control_secret,
            gw.metrics,
            config=CoreConfig(rebalance=cfg.rebalance),
            planner=PlannerConfig(tolerance=cfg.rebalance_tolerance),
        )
        gw.admission = controller.admission
        gw.credential_of = controller.endpoint.credential
        controller.start()
        if cfg.workers > 1:
            tasks.append(asyncio.create_task(publish_admission(cfg, controller.admission)))
    elif watched is not None:
        assert cfg.control_secret is not None
        gw.admission = watched.admission
        gw.credential_of = cache(partial(node_credential, cfg.control_secret))
        tasks.append(asyncio.create_task(watch_routes(watched)))
    admin = AdminAPI(gw, controller, token, ready=watched.ready if watched else None)
    ahost, aport = parse_hostport(cfg.admin_listen, "admin_listen")
    await gw.start()
    admin_port = await admin.start(ahost, aport + worker)
    log.info("admin_listening", address=f"{ahost}:{admin_port}", control=controller is not None)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, partial(gw.request_exit, final=True))
    while True:
        await gw.exit_requested.wait()
        log.info("gateway_stopping", connections=len(gw.conns))
        if cfg.workers > 1 and not gw.exit_final:
            # Asked through this worker's admin API: the parent drains every worker.
            os.kill(os.getppid(), signal.SIGTERM)
        if await gw.drain():
            break
        # POST /v1/undrain reopened the gateway before its drain was over: keep serving.
    for t in tasks:
        t.cancel()
    if controller is not None:
        await controller.close()
    if mirror is not None:
        await mirror.close()
        await transport.close()
    await admin.close()
    await gw.close()


async def watch_routes(source: FileRouteSource, every_s: float = ROUTE_POLL_S) -> None:
    """Workers 1..N-1: follow worker 0's state file."""
    while True:
        await asyncio.sleep(every_s)
        source.refresh()


async def publish_admission(cfg: GatewayConfig, admission: Callable[[], int | None]) -> None:
    """Worker 0: tell the other workers when the fleet starts or stops shedding."""
    last: int | None = None
    write_admission(cfg.state_dir, None)
    while True:
        await asyncio.sleep(ROUTE_POLL_S)
        now = admission()
        if now != last:
            write_admission(cfg.state_dir, now)
            last = now


def credential_main(argv: list[str]) -> None:
    """``python -m gateway credential NODE_ID``: print a backend's credential."""
    p = argparse.ArgumentParser(
        prog="python -m gateway credential",
        description="Print the credential of one backend node, derived from the control "
        "secret (flag, GATEWAY_CONTROL_SECRET or the --config file). Give it to that "
        "backend only (BACKEND_CREDENTIAL): it lets a process register as that node.",
    )
    p.add_argument("node_id")
    p.add_argument("--config", help="TOML file with gateway settings")
    p.add_argument("--control-secret", dest="control_secret")
    args = p.parse_args(argv)
    try:
        cfg = build_config(
            GatewayConfig,
            file=args.config,
            env_prefix="GATEWAY_",
            flags={"control_secret": args.control_secret},
        )
    except (ConfigError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not cfg.control_secret:
        print("gateway: credential needs the control secret", file=sys.stderr)
        raise SystemExit(2)
    print(node_credential(cfg.control_secret, args.node_id))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["credential"]:
        credential_main(argv[1:])
        return
    args = parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        cfg = build_config(GatewayConfig, file=args.config, env_prefix="GATEWAY_", flags=flags)
        configure_logging(cfg.log_level)
        token, token_file = admin_token(cfg)
        if token_file is not None:
            log.info("admin_token_written", path=str(token_file))
        if cfg.workers > 1 and cfg.etcd:
            raise ConfigError(
                "config: --workers and --etcd do not go together: with etcd, run one "
                "gateway process per core, each with its own --gateway-id"
            )
        if cfg.workers > 1:
            raise SystemExit(supervise(cfg.workers, partial(run_worker, cfg, token)))
        uvloop.run(serve(cfg, token))
    except (ConfigError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"gateway: cannot listen: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def run_worker(cfg: GatewayConfig, token: str, worker: int) -> int:
    """A forked worker's life; its exit code."""
    try:
        uvloop.run(serve(cfg, token, worker))
    except (ConfigError, ValueError) as exc:
        print(f"gateway: worker {worker}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway: worker {worker}: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    main()
