"""Example apps; ``python -m backend NAME`` runs one."""

from __future__ import annotations

from backend.app import App
from backend.apps.chat import ChatApp
from backend.apps.counter import CounterApp
from backend.apps.echo import EchoApp

APPS: dict[str, type[App]] = {"echo": EchoApp, "chat": ChatApp, "counter": CounterApp}
