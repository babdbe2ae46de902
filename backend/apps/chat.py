"""Chat rooms: the key is the room; messages are broadcast, with a bounded history."""

from __future__ import annotations

from typing import Any

from backend.app import App, KeyContext, SessionHandle

HISTORY = 50


class ChatApp(App):
    name = "chat"

    def initial_state(self, key: str) -> Any:
        return {"history": []}

    def on_join(self, ctx: KeyContext, session: SessionHandle, resumed: bool) -> None:
        if not resumed:  # a resumed session already has what it missed, via replay
            ctx.send(session, {"type": "history", "messages": ctx.state["history"]})

    def on_message(self, ctx: KeyContext, session: SessionHandle, data: Any) -> None:
        entry = {
            "from": session.sid,
            "text": str(data.get("text", ""))[:4096]
            if isinstance(data, dict)
            else str(data)[:4096],
        }
        history: list[Any] = ctx.state["history"]
        history.append(entry)
        del history[:-HISTORY]
        ctx.broadcast({"type": "message", **entry})
