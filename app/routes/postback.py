"""POST /v1/conversions: the signed postback, as a plain ASGI endpoint in front of FastAPI.

Like the redirect, it bypasses FastAPI's routing, dependency injection and response machinery
(about a millisecond of CPU per request): it bounds and reads the body, and hands it to
`intake.receive_postbacks` with the other postbacks read in the same turn of the event loop
(app/pipeline/batching.py), which verifies the signatures, validates the bodies as the pydantic
model does (app/conversion_body.py) and waits for the batch's one Redis call. Answers, error
bodies and the OpenAPI document are the FastAPI route's (app/routes/conversions.py documents
this operation). What the edge does for
other management requests is done here too: the body limit (413), the per-IP refusal after
failed authentications (429), counting a 401 as a failure, metrics and the X-Request-Id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from app import metrics
from app.edge import (
    TOO_LARGE,
    TOO_MANY,
    client_ip,
    declared_too_large,
    failure,
    new_request_id,
    respond,
)
from app.errors import BACKEND_UNAVAILABLE, AppError
from app.pipeline.batching import Gatherer
from app.pipeline.event_buffer import EventBuffer
from app.ratelimits import RateLimits
from app.security import IpAnonymizer
from app.services import intake
from app.services.intake import PostbackAnswer, Quota, SecretCache, SignedPostback

log = logging.getLogger(__name__)

ROUTE = "/v1/conversions"
_INTERNAL = orjson.dumps(
    {"error": {"code": "internal_error", "message": "internal error", "field": None}}
)


class _TooLarge(Exception):
    pass


class PostbackEndpoint:
    def __init__(
        self,
        secrets: SecretCache,
        buffer: EventBuffer,
        anonymize: IpAnonymizer,
        limits: RateLimits,
        max_body_bytes: int,
        trust_forwarded_for: bool,
    ) -> None:
        self._secrets = secrets
        self._buffer = buffer
        self._anonymize = anonymize
        self._limits = limits
        item = limits.postbacks
        self._quota = Quota(item.amount, int(item.get_expiry())) if item.amount else None
        self._max_body = max_body_bytes
        self._trust_forwarded_for = trust_forwarded_for
        # The postbacks read in one turn of the event loop are received together.
        self._batch: Gatherer[SignedPostback, PostbackAnswer] = Gatherer(
            self._receive, asyncio.get_running_loop()
        )

    def _receive(
        self, postbacks: Sequence[SignedPostback]
    ) -> Awaitable[list[PostbackAnswer | Exception]]:
        return intake.receive_postbacks(
            self._secrets, self._buffer, self._anonymize, self._quota, postbacks,
            datetime.now(UTC),
        )  # fmt: skip

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers: dict[bytes, bytes] = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"")[:64] or new_request_id()
        extra: list[tuple[bytes, bytes]] = [(b"x-request-id", request_id)]
        ip = client_ip(scope, headers, self._trust_forwarded_for)
        status, body = await self._answer(receive, headers, ip, extra)
        await respond(send, status, body, extra)
        metrics.http_stats.observe(ROUTE, "POST", status, time.perf_counter() - started)
        if status == 401:
            # A bad signature, an unknown merchant: guessing is limited per IP.
            await self._limits.failed_authentication(ip)

    async def _answer(
        self, receive: Any, headers: dict[bytes, bytes], ip: str,
        extra: list[tuple[bytes, bytes]],
    ) -> tuple[int, bytes]:  # fmt: skip
        if declared_too_large(headers, self._max_body):
            return 413, TOO_LARGE
        if (refused := self._limits.blocked(ip)) is not None:
            extra += refused.headers()
            return 429, TOO_MANY
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            return 413, TOO_LARGE
        try:
            answer = await self._batch.submit(SignedPostback(
                headers.get(b"x-referral-merchant", b"").decode("latin-1") or None,
                headers.get(b"x-referral-signature", b"").decode("latin-1") or None,
                body,
            ))  # fmt: skip
        except AppError as error:
            return failure(error, extra)
        except BACKEND_UNAVAILABLE as exc:
            return failure(exc, extra)
        except Exception:
            log.exception("postback failed")
            return 500, _INTERNAL
        extra += answer.headers
        return 202, orjson.dumps(answer.body)

    async def _read_body(self, receive: Any) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
