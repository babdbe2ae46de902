"""Counter: per-key message count, the loadtest's ground truth for exactly-once.

Each message increments the key's counter once and is answered to its sender
with ``{"n": <the message's n>, "count": <counter after it>}``. If a message
were processed twice, or lost after being acked, the final count would not
equal the number of messages the clients sent for that key.
"""

from __future__ import annotations

from typing import Any

from backend.app import App, KeyContext, SessionHandle


class CounterApp(App):
    name = "counter"

    def initial_state(self, key: str) -> Any:
        return {"count": 0}

    def on_message(self, ctx: KeyContext, session: SessionHandle, data: Any) -> None:
        ctx.state["count"] += 1
        n = data.get("n") if isinstance(data, dict) else None
        reply: dict[str, Any] = {"n": n, "count": ctx.state["count"]}
        if isinstance(data, dict) and "t" in data:
            reply["t"] = data["t"]  # the client's send time, for latency measurement
        ctx.send(session, reply)
