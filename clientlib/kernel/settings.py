"""Build a config dataclass from defaults < TOML file < environment < flags.

Used by every binary's entry point. Errors name the bad field and where the
value came from, e.g. ``config: listen (from env GATEWAY_LISTEN): expected HOST:PORT``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


def parse_hostport(value: str, field: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{field}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _coerce(tp: Any, value: Any, name: str, src: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(args[0], value, name, src)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(
                f"config: {name} ({src}): expected one of "
                f"{', '.join(map(str, typing.get_args(tp)))}, got {value!r}"
            )
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        items = value.split(",") if isinstance(value, str) else list(value)
        out = [
            _coerce(inner, v.strip() if isinstance(v, str) else v, name, src)
            for v in items
            if v != ""
        ]
        return tuple(out) if origin is tuple else out
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            low = str(value).lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp in (int, float, str):
            if tp is not str and isinstance(value, bool):
                raise ValueError(value)
            return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"config: {name} ({src}): expected {tp.__name__}, got {value!r}"
        ) from None
    return value


def build_config(
    cls: type[T],
    *,
    file: str | Path | None = None,
    env_prefix: str = "",
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError("build_config needs a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values: dict[str, tuple[Any, str]] = {}
    if file is not None:
        try:
            data = tomllib.loads(Path(file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config: file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {file} is not valid TOML: {exc}") from None
        for k, v in data.items():
            name = k.replace("-", "_")
            if name not in fields:
                raise ConfigError(f"config: unknown field {k!r} in {file}")
            values[name] = (v, f"from {file}")
    env = os.environ if environ is None else environ
    if env_prefix:
        for name in fields:
            var = f"{env_prefix}{name.upper()}"
            if var in env:
                values[name] = (env[var], f"from env {var}")
    for k, v in (flags or {}).items():
        if v is not None and k in fields:
            values[k] = (v, "from flag --" + k.replace("_", "-"))
    kwargs = {n: _coerce(hints[n], v, n, src) for n, (v, src) in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: {exc}") from None
