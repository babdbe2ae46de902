"""Every setting exists once, is documented, has a flag, an env var and a TOML key, and is
read by the code it configures."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import pytest

from backend.config import BackendConfig
from clientlib.kernel.settings import ConfigError, add_setting_flags, build_config, setting_docs
from gateway.config import GatewayConfig

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).parents[1]
PROGRAMS = [
    (GatewayConfig, "GATEWAY_", ROOT / "docs" / "gateway.md", ROOT / "gateway"),
    (BackendConfig, "BACKEND_", ROOT / "docs" / "backend.md", ROOT / "backend"),
]


def documented(doc: Path) -> set[str]:
    """Setting names in the doc's settings table: rows like | `a`, `b` | default | meaning |."""
    text = doc.read_text()
    table = text[text.index("| setting | default | meaning |") :]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        names |= set(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return names


def attributes_read(package: Path, skip: str) -> set[str]:
    out: set[str] = set()
    for path in package.rglob("*.py"):
        if path.name == skip:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                out.add(node.attr)
    return out


@pytest.mark.parametrize("cls,prefix,doc,package", PROGRAMS)
def test_every_setting_is_documented_and_nothing_else(cls, prefix, doc, package):
    names = {name for name, _, _ in setting_docs(cls)}
    assert documented(doc) == names


@pytest.mark.parametrize("cls,prefix,doc,package", PROGRAMS)
def test_every_setting_is_read_by_the_code(cls, prefix, doc, package):
    read = attributes_read(package, "config.py")
    unread = sorted(name for name, _, _ in setting_docs(cls) if name not in read)
    assert not unread, f"settings nothing reads: {unread}"


# The least each program needs to start (a backend needs a control plane or direct mode).
BASE = {GatewayConfig: {}, BackendConfig: {"direct": "on"}}


@pytest.mark.parametrize("cls,prefix,doc,package", PROGRAMS)
def test_every_setting_has_a_flag_an_env_var_and_a_toml_key(cls, prefix, doc, package, tmp_path):
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, cls, prefix)
    flags = {a.dest for a in parser._actions}
    no_flag = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("flag", True)}
    base = BASE[cls]
    for name, default, _ in setting_docs(cls):
        assert (name in flags) != (name in no_flag), name
        if default in ("none", "[]", "required", "") or name in base:
            continue
        value = {"on": "true", "off": "false"}.get(default, default)
        env = {f"{prefix}{k.upper()}": v for k, v in base.items()} | {
            f"{prefix}{name.upper()}": value
        }
        assert getattr(build_config(cls, env_prefix=prefix, environ=env), name) is not None
        good = tmp_path / f"{name}.toml"
        good.write_text("".join(f'{k} = "{v}"\n' for k, v in (base | {name: value}).items()))
        assert getattr(build_config(cls, file=good), name) is not None
        if isinstance(build_config(cls, flags=base).__dict__[name], list):
            continue
        bad = tmp_path / "bad.toml"
        bad.write_text(f'{name} = ["not", "this"]\n')
        with pytest.raises(ConfigError, match=name):
            build_config(cls, file=bad, flags=base)  # the error names the setting and the file


def test_checkpoint_and_reconnect_settings_reach_the_node():
    cfg = build_config(
        BackendConfig,
        env_prefix="BACKEND_",
        flags={"checkpoint_s": "2.5", "reconnect_rate": "50", "direct": "on"},
    )
    assert cfg.checkpoint_s == 2.5 and cfg.reconnect_rate == 50
    # (tests/backend/test_node.py shows what the node does with them)
