"""``python -m gateway``: run the gateway (data plane, admin API, embedded control plane)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from functools import partial

import structlog
import uvloop

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
from gateway.etcd_routes import EtcdMirror, EtcdRoutes
from gateway.etcd_transport import etcd_client
from gateway.route_source import RouteSource, StaticDirectory
from gateway.server import Gateway

log = structlog.get_logger("gateway")


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


async def serve(cfg: GatewayConfig) -> None:
    directory: RouteSource
    edir: EmbeddedDirectory | None = None
    mirror: EtcdMirror | None = None
    routes: EtcdRoutes | None = None
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
    elif cfg.control_secret:
        edir = EmbeddedDirectory(cfg.state_dir, lease_s=cfg.lease_s)
        directory = edir
    else:
        raise ConfigError(
            "config: give --static-backend HOST:PORT (repeatable) or "
            "--control-secret to let backends register (with --etcd: through etcd)"
        )
    token, token_file = admin_token(cfg)
    if token_file is not None:
        log.info("admin_token_written", path=str(token_file))
    gw = Gateway(cfg, directory)
    controller: Controller | None = None
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
            routes_ready=routes.ready,
        )
        gw.admission = controller.admission
        gw.credential_of = controller.endpoint.credential
        mirror.start()
        controller.start()
    elif edir is not None:
        assert cfg.control_secret is not None
        controller = Controller(
            edir, cfg.control_secret, gw.metrics, config=CoreConfig(rebalance=cfg.rebalance)
        )
        gw.admission = controller.admission
        gw.credential_of = controller.endpoint.credential
        controller.start()
    admin = AdminAPI(gw, controller, token)
    ahost, aport = parse_hostport(cfg.admin_listen, "admin_listen")
    await gw.start()
    admin_port = await admin.start(ahost, aport)
    log.info("admin_listening", address=f"{ahost}:{admin_port}", control=controller is not None)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, partial(gw.request_exit, final=True))
    while True:
        await gw.exit_requested.wait()
        log.info("gateway_stopping", connections=len(gw.conns))
        if await gw.drain():
            break
        # POST /v1/undrain reopened the gateway before its drain was over: keep serving.
    if controller is not None:
        await controller.close()
    if mirror is not None:
        await mirror.close()
        await transport.close()
    await admin.close()
    await gw.close()


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
        uvloop.run(serve(cfg))
    except (ConfigError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"gateway: cannot listen: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
