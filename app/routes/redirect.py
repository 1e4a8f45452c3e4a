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
import re
import time
from typing import Any
from urllib.parse import unquote_plus

from orjson import dumps

from app import metrics
from app.codes import LINK_CODE_PATTERN
from app.edge import respond
from app.pipeline.event_buffer import EventBuffer, EventsLost
from app.pipeline.events import is_click_id, new_click_and_visitor_ids
from app.security import IpAnonymizer
from app.settings import Settings
from app.storage.link_cache import NOT_CACHED, LinkCache

log = logging.getLogger(__name__)

ROUTE = "/r/{code}"
# Request headers the click keeps, each to a slot of _read_headers; the rest are skipped.
_WANTED_HEADERS = {
    b"user-agent": 0, b"referer": 1, b"sec-purpose": 2, b"purpose": 2, b"x-purpose": 2,
    b"x-moz": 2, b"cookie": 3, b"x-forwarded-for": 4,
}  # fmt: skip
_NOT_FOUND = (
    b'{"error":{"code":"link_not_found","message":"unknown or disabled link","field":"code"}}'
)
_UNAVAILABLE = (
    b'{"error":{"code":"unavailable","message":"link lookup unavailable, retry shortly",'
    b'"field":null}}'
)
# The most of the click URL's own query carried on to the shop (whole parameters only).
MAX_PASSTHROUGH = 1024
_METHOD_NOT_ALLOWED = b'{"error":{"code":"method_not_allowed","message":"use GET","field":null}}'
# A link's answer, found or not, is never cached: a disabled link must stop at once.
_NO_STORE = (b"cache-control", b"no-store")


class RedirectEndpoint:
    def __init__(
        self,
        links: LinkCache,
        buffers: list[EventBuffer],
        settings: Settings,
        anonymize: IpAnonymizer,
    ) -> None:
        self._links = links
        self._buffers = buffers  # one per click stream shard
        self._anonymize = anonymize
        self._param = settings.click_id_param
        self._param_in_query = settings.click_id_param.lower().encode()
        self._param_lower = settings.click_id_param.lower()
        self._cookie_name = settings.cookie_name
        self._cookie_prefix = settings.cookie_name + "="
        self._cookie_flags = "; Path=/; SameSite=Lax; HttpOnly" + (
            "; Secure" if settings.cookie_secure else ""
        )
        self._cookie_tails: dict[int, str] = {}  # per attribution window
        self._trust_xff = settings.trust_forwarded_for
        self._stats = metrics.http_stats
        # Redirects answered, counted exactly; their latency is sampled (one in 8), which is
        # plenty for a histogram and costs a click nothing.
        self._answered_get = self._stats.cell(ROUTE, "GET", 302)
        self._answered_head = self._stats.cell(ROUTE, "HEAD", 302)

    def _count(self, method: str, status: int, started: float) -> None:
        self._stats.observe(ROUTE, method, status, time.perf_counter() - started)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        if method != "GET" and method != "HEAD":
            await respond(send, 405, _METHOD_NOT_ALLOWED, [_NO_STORE, (b"allow", b"GET, HEAD")])
            self._count(method, 405, started)
            return

        code: str = scope["path"][3:]
        target = self._links.get(code)
        if target is NOT_CACHED:
            if not LINK_CODE_PATTERN.fullmatch(code):
                target = None
            else:
                try:
                    target = await self._links.load(code)
                except Exception:  # neither Redis nor PostgreSQL could say where to go
                    log.exception("link lookup failed", extra={"code": code})
                    metrics.errors.labels("link_lookup").inc()
                    await respond(send, 503, _UNAVAILABLE, [_NO_STORE, (b"retry-after", b"2")])
                    self._count(method, 503, started)
                    return
        if target is None or not target.active:
            # Never a redirect to anything the request supplied: unknown means 404.
            await respond(send, 404, _NOT_FOUND, [_NO_STORE])
            self._count(method, 404, started)
            return

        user_agent, referer, purpose, cookie, forwarded = _read_headers(scope["headers"])

        click_id, visitor_id = new_click_and_visitor_ids()
        if cookie:
            visitor_id = self._visitor_from(cookie) or visitor_id
        if forwarded and self._trust_xff:
            # Our trusted proxy appends the address it saw: the last entry is the client.
            ip = forwarded.rsplit(",", 1)[-1].strip()
        else:
            client = scope.get("client")
            ip = client[0] if client else ""
        ip_hash, ip_prefix = self._anonymize(ip)

        query: bytes = scope["query_string"]
        passthrough = self._passthrough(query) if query else ""
        click = (click_id, target.link_id, visitor_id, ip_hash, ip_prefix, user_agent, referer,
                 purpose, "H" if method == "HEAD" else "G")  # fmt: skip
        try:  # noqa: SIM105 (try costs nothing here; contextlib.suppress builds an object)
            # The query the shop gets travels with the click (the paid-ad rule reads it).
            await self._buffers[target.shard].add(
                dumps((*click, passthrough) if passthrough else click)
            )
        except EventsLost:
            pass  # counted and logged by the buffer; the shopper is redirected regardless

        if passthrough:
            location = f"{target.location_head}{click_id}&{passthrough}"
        else:
            location = target.location_head + click_id
        tail = self._cookie_tails.get(target.max_age) or self._cookie_tail(target.max_age)
        await send(
            {
                "type": "http.response.start",
                "status": 302,
                "headers": [
                    (b"location", (location + target.fragment).encode("latin-1")),
                    (b"set-cookie", (self._cookie_prefix + visitor_id + tail).encode("latin-1")),
                    (b"cache-control", b"private, no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        answered = self._answered_get if method == "GET" else self._answered_head
        n = answered[0] = answered[0] + 1
        if not n & 7:
            self._stats.observe_latency(ROUTE, time.perf_counter() - started)

    def _cookie_tail(self, max_age: int) -> str:
        tail = self._cookie_tails[max_age] = f"; Max-Age={max_age}{self._cookie_flags}"
        return tail

    def _visitor_from(self, cookie: str) -> str | None:
        """The visitor id in our cookie, when the browser has a well-formed one."""
        at = cookie.find(self._cookie_prefix)
        while at > 0 and cookie[at - 1] not in " ;":
            at = cookie.find(self._cookie_prefix, at + 1)
        if at < 0:
            return None
        start = at + len(self._cookie_prefix)
        value = cookie[start : start + 32]
        return value if is_click_id(value) else None

    def _passthrough(self, query: bytes) -> str:
        """The click URL's own query (utm tags an advocate added), bounded, minus any forged
        click id — whatever its spelling: names are compared decoded (`%72cid`), and `;`
        separates parameters too (some shop frameworks split on it)."""
        if len(query) > MAX_PASSTHROUGH:
            # Whole parameters only, and never more than a bounded Location header.
            query = query[: max(query.rfind(b"&", 0, MAX_PASSTHROUGH + 1), 0)]
        text = query.decode("latin-1")
        if b"%" not in query and b";" not in query and self._param_in_query not in query.lower():
            return text  # the common case, checked without splitting
        kept = []
        for part in re.split("[&;]", text):
            name = unquote_plus(part.partition("=")[0]).strip().lower()
            if part and name != self._param_lower:
                kept.append(part)
        return "&".join(kept)


def _read_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, ...]:
    """(user agent, referer, prefetch purpose, cookie, x-forwarded-for), bounded in length."""
    found: list[bytes | None] = [None, None, None, None, None]
    for name, value in headers:
        slot = _WANTED_HEADERS.get(name)
        if slot is not None:
            found[slot] = value
    user_agent, referer, purpose, cookie, forwarded = found
    return (
        user_agent[:512].decode("latin-1") if user_agent is not None else None,
        referer[:1024].decode("latin-1") if referer is not None else None,
        purpose[:64].decode("latin-1") if purpose is not None else None,
        cookie.decode("latin-1") if cookie is not None else None,
        forwarded.decode("latin-1") if forwarded is not None else None,
    )
