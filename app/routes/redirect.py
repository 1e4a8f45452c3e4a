"""GET/HEAD /r/{code}: the hot path, as a plain ASGI endpoint.

It bypasses FastAPI's routing, dependency injection and validation (the management API keeps
them): per click it does one dict lookup, builds a few strings and awaits one future — the group
commit in `EventBuffer`, which writes the clicks of all concurrent requests to Redis in one round
trip. The redirect is sent only after the click is durable. Bot classification, tenant lookup and
everything else that can wait is done by the flusher.

Awaits per click: `EventBuffer.add` (always), `LinkCache.load` (only on a cache miss), and the two
`send` calls.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from app import metrics
from app.codes import LINK_CODE_PATTERN
from app.events import is_click_id, new_click_and_visitor_ids
from app.security import IpAnonymizer
from app.settings import Settings
from app.storage.event_buffer import EventBuffer
from app.storage.link_cache import LinkCache

log = logging.getLogger(__name__)

ROUTE = "/r/{code}"
_PURPOSE_HEADERS = (b"sec-purpose", b"purpose", b"x-purpose", b"x-moz")
_NOT_FOUND = (
    b'{"error":{"code":"link_not_found","message":"unknown or disabled link","field":"code"}}'
)
_UNAVAILABLE = (
    b'{"error":{"code":"unavailable","message":"link lookup unavailable, retry shortly",'
    b'"field":null}}'
)
_METHOD_NOT_ALLOWED = b'{"error":{"code":"method_not_allowed","message":"use GET","field":null}}'


class RedirectEndpoint:
    def __init__(self, links: LinkCache, buffers: list[EventBuffer], settings: Settings) -> None:
        self._links = links
        self._buffers = buffers  # one per click stream shard
        self._anonymize = IpAnonymizer(settings.secret_bytes)
        self._param = settings.click_id_param
        self._param_in_query = (settings.click_id_param + "=").encode()
        self._cookie_name = settings.cookie_name
        self._cookie_prefix = settings.cookie_name + "="
        self._cookie_flags = "; Path=/; SameSite=Lax; HttpOnly" + (
            "; Secure" if settings.cookie_secure else ""
        )
        self._trust_xff = settings.trust_forwarded_for
        self._stats = metrics.http_stats

    def _count(self, method: str, status: int, started: float) -> None:
        self._stats.observe(ROUTE, method, status, time.perf_counter() - started)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        if method != "GET" and method != "HEAD":
            await _respond(send, 405, _METHOD_NOT_ALLOWED, [(b"allow", b"GET, HEAD")])
            self._count(method, 405, started)
            return

        code: str = scope["path"][3:]
        target = self._links.get(code)
        if target is False:
            if not LINK_CODE_PATTERN.fullmatch(code):
                target = None
            else:
                try:
                    target = await self._links.load(code)
                except Exception:  # neither Redis nor PostgreSQL could say where to go
                    log.exception("link lookup failed", extra={"code": code})
                    metrics.errors.labels("link_lookup").inc()
                    await _respond(send, 503, _UNAVAILABLE, [(b"retry-after", b"2")])
                    self._count(method, 503, started)
                    return
        if target is None or target is False or not target.active:
            # Never a redirect to anything the request supplied: unknown means 404.
            await _respond(send, 404, _NOT_FOUND, [])
            self._count(method, 404, started)
            return

        user_agent = referer = purpose = cookie = forwarded = None
        for name, value in scope["headers"]:
            if name == b"user-agent":
                user_agent = value[:512].decode("latin-1")
            elif name == b"referer":
                referer = value[:1024].decode("latin-1")
            elif name == b"cookie":
                cookie = value.decode("latin-1")
            elif name in _PURPOSE_HEADERS:
                purpose = value[:64].decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded = value.decode("latin-1")

        click_id, new_visitor = new_click_and_visitor_ids()
        visitor_id = self._visitor_from(cookie) or new_visitor
        if forwarded and self._trust_xff:
            # Our trusted proxy appends the address it saw: the last entry is the client.
            ip = forwarded.rsplit(",", 1)[-1].strip()
        else:
            client = scope.get("client")
            ip = client[0] if client else ""
        ip_hash, ip_prefix = self._anonymize(ip)

        await self._buffers[target.shard].add(
            [click_id, target.link_id, visitor_id, ip_hash, ip_prefix, user_agent, referer,
             purpose, "H" if method == "HEAD" else "G"]
        )  # fmt: skip

        query: bytes = scope["query_string"]
        location = target.location_head + click_id
        if query:
            location += "&" + self._passthrough(query)
        location += target.fragment
        cookie_value = (
            f"{self._cookie_prefix}{visitor_id}; Max-Age={target.max_age}{self._cookie_flags}"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie_value.encode("latin-1")),
                    (b"cache-control", b"private, no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        self._count(method, 302, started)

    def _visitor_from(self, cookie: str | None) -> str | None:
        """The visitor id in our cookie, when the browser has a well-formed one."""
        if not cookie:
            return None
        at = cookie.find(self._cookie_prefix)
        while at > 0 and cookie[at - 1] not in " ;":
            at = cookie.find(self._cookie_prefix, at + 1)
        if at < 0:
            return None
        start = at + len(self._cookie_prefix)
        value = cookie[start : start + 32]
        return value if is_click_id(value) else None

    def _passthrough(self, query: bytes) -> str:
        """The click URL's own query (utm tags an advocate added), minus any forged click id."""
        text = query.decode("latin-1")
        if self._param_in_query not in query:
            return text
        return "&".join(p for p in text.split("&") if not p.startswith(self._param + "="))


async def _respond(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
