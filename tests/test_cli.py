"""Each package runs as a module with --help, and bad configuration is named clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("mod", ["gateway", "backend", "loadtest"])
def test_help(mod):
    p = run(mod, "--help")
    assert p.returncode == 0 and "usage" in p.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["gateway", "--listen", "nowhere"], "listen: expected HOST:PORT"),
        (["gateway", "--listen", "127.0.0.1:0"], "--static-backend"),
        (["gateway", "--static-backend", "127.0.0.1:1", "--control-secret", "x"], "exclude"),
        (["backend", "echo", "--capacity", "-5"], "capacity"),
        (["backend", "echo", "--durability", "sometimes"], "durability"),
        (["backend", "echo", "--control", "ws://x/v1/control"], "credential"),
        (["backend", "echo"], "--direct on"),
        (["gateway", "credential", "node-1"], "control secret"),
        (["loadtest", "run", "--scenario", "nope"], "no scenario"),
        (["loadtest", "run", "--clients", "0"], "clients must be"),
    ],
)
def test_bad_config_is_named(args, needle):
    p = run(*args)
    assert p.returncode == 2
    assert needle in p.stderr


def test_bad_toml_field_is_named(tmp_path):
    f = tmp_path / "gw.toml"
    f.write_text('listen = "127.0.0.1:0"\nlisten_backlog = 5\n')
    p = run("gateway", "--config", str(f))
    assert p.returncode == 2 and "unknown field 'listen_backlog'" in p.stderr
    f.write_text('max_frame_bytes = "big"\nstatic_backend = ["127.0.0.1:1"]\n')
    p = run("gateway", "--config", str(f))
    assert p.returncode == 2 and "max_frame_bytes" in p.stderr


def test_credential_command_derives_a_nodes_credential():
    from clientlib.kernel.credentials import node_credential

    p = run("gateway", "credential", "node-7", "--control-secret", "s3cret")
    assert p.returncode == 0
    assert p.stdout.strip() == node_credential("s3cret", "node-7")
    assert p.stdout.strip() != node_credential("s3cret", "node-8")


def test_workers_with_etcd_are_refused(tmp_path):
    p = run(
        "gateway",
        "--workers",
        "2",
        "--etcd",
        "127.0.0.1:1",
        "--control-secret",
        "x",
        "--listen",
        "127.0.0.1:9555",
        "--admin-listen",
        "127.0.0.1:9556",
        "--state-dir",
        str(tmp_path),
    )
    assert p.returncode == 2 and "--workers and --etcd do not go together" in p.stderr
