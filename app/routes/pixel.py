"""GET /t/pixel.gif: the order pixel, as a plain ASGI endpoint in front of FastAPI.

Like the postback endpoint (app/routes/postback.py): FastAPI's route in app/routes/conversions.py
documents the operation; this serves it with the same validation (`schemas.PixelQuery`), the same
limits as the edge (per IP, then per merchant) and the same answers, without FastAPI's routing
and dependency injection per order-confirmation page.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import cookie_parser

from app import metrics
from app.edge import (
    TOO_LARGE,
    TOO_MANY,
    client_ip,
    declared_too_large,
    failure,
    limit_pixel,
    respond,
)
from app.errors import BACKEND_UNAVAILABLE, AppError, InvalidFields
from app.pipeline.event_buffer import EventBuffer
from app.ratelimits import RateLimits
from app.schemas import PixelQuery
from app.services import intake
from app.services.intake import SecretCache

ROUTE = "/t/pixel.gif"
# A transparent 1x1 GIF.
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_NO_STORE = (b"cache-control", b"no-store")


class PixelEndpoint:
    def __init__(
        self,
        secrets: SecretCache,
        buffer: EventBuffer,
        limits: RateLimits,
        cookie_name: str,
        max_body_bytes: int,
        trust_forwarded_for: bool,
    ) -> None:
        self._secrets = secrets
        self._buffer = buffer
        self._limits = limits
        self._cookie_name = cookie_name
        self._max_body = max_body_bytes
        self._trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers: dict[bytes, bytes] = dict(scope["headers"])
        extra: list[tuple[bytes, bytes]] = []
        status, body = await self._answer(scope, headers, extra)
        if body is PIXEL:
            await respond(send, status, body, [_NO_STORE, *extra], content_type=b"image/gif")
        else:
            await respond(send, status, body, extra)
        metrics.http_stats.observe(ROUTE, "GET", status, time.perf_counter() - started)

    async def _answer(
        self, scope: dict[str, Any], headers: dict[bytes, bytes], extra: list[tuple[bytes, bytes]]
    ) -> tuple[int, bytes]:
        if declared_too_large(headers, self._max_body):
            return 413, TOO_LARGE
        ip = client_ip(scope, headers, self._trust_forwarded_for)
        if (refused := self._limits.blocked(ip)) is not None:
            extra += refused.headers()
            return 429, TOO_MANY
        verdict = await limit_pixel(self._limits, scope, ip)
        if verdict.limit:
            extra += verdict.headers()
        if not verdict.allowed:
            return 429, TOO_MANY
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            params = PixelQuery.model_validate(dict(parse_qsl(query, keep_blank_values=True)))
        except ValidationError as exc:
            return failure(InvalidFields.of(exc, "query"), extra)
        cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
        try:
            await intake.accept_pixel(
                self._secrets, self._buffer, params.m, params.order_id, params.amount_minor,
                params.currency, cookies.get(self._cookie_name, ""), datetime.now(UTC),
            )  # fmt: skip
        except AppError as error:
            return failure(error, extra)
        except BACKEND_UNAVAILABLE as exc:
            return failure(exc, extra)
        return 200, PIXEL
