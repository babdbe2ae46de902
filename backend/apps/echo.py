"""Echo: every message goes back to its sender. Stateless; used by benchmarks."""

from __future__ import annotations

from typing import Any

from backend.app import App, KeyContext, SessionHandle


class EchoApp(App):
    name = "echo"

    def on_message(self, ctx: KeyContext, session: SessionHandle, data: Any) -> None:
        ctx.send(session, data)
