"""The ceiling for our redirect on the same server: a minimal ASGI app answering 302."""

from __future__ import annotations

from typing import Any

_HEADERS = [
    (b"location", b"https://shop.example.com/welcome?rcid=01a20906cead4b3aeac6a521788dfef7"),
    (b"content-length", b"0"),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 302, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": b""})
