"""Ceilings on the same server: a minimal ASGI app answering 302 (for the redirect), and one
reading a JSON POST and answering 202 (for the postback intake)."""

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


_ACCEPTED = b'{"id":"5d1f0d36-2a4c-5c79-9a57-1a4b3c2d1e0f","status":"accepted"}'
_POST_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_ACCEPTED)).encode()),
]


async def post_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ceiling for our postback intake: reads the JSON body and answers 202 with a body of
    the same shape as ours, nothing else."""
    if scope["type"] == "lifespan":
        await app(scope, receive, send)
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": _POST_HEADERS})
    await send({"type": "http.response.body", "body": _ACCEPTED})
