"""structlog set-up shared by the binaries: JSON lines (orjson) off a terminal, pretty on one."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

__all__ = [
    "configure_logging",
]


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog once at a binary's entry point.

    ``json`` None picks by whether stderr is a terminal. The fast path follows
    structlog's performance guide: contextvars merge, orjson serializer,
    bytes logger, level filtering before any processor runs.
    """
    if json is None:
        json = not sys.stderr.isatty()
    lvl = logging.getLevelNamesMapping().get(level.upper())
    if lvl is None:
        raise ValueError(f"log level: unknown level {level!r}")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        structlog.configure(
            processors=[
                *shared,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(lvl),
            logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=[*shared, structlog.dev.ConsoleRenderer(colors=False)],
            wrapper_class=structlog.make_filtering_bound_logger(lvl),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            cache_logger_on_first_use=True,
        )
