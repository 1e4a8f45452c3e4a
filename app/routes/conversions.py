"""Conversion postbacks from merchants' backends (signed), and reading their outcome."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from app.routes.deps import (
    Anonymizer,
    AppSettings,
    ConversionBuffer,
    CurrentMerchant,
    Pool,
    RedisConn,
    WebhookSecrets,
)
from app.routes.pixel import PIXEL
from app.schemas import ConversionAccepted, ConversionIn, ConversionView, PixelQuery
from app.services import intake

router = APIRouter(tags=["conversions"])


@router.post(
    "/v1/conversions",
    status_code=202,
    response_model=ConversionAccepted,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ConversionIn.model_json_schema()}},
        }
    },
)
async def post_conversion(
    request: Request,
    secrets: WebhookSecrets,
    buffer: ConversionBuffer,
    anonymize: Anonymizer,
    x_referral_merchant: Annotated[str | None, Header(description="Your merchant id")] = None,
    x_referral_signature: Annotated[
        str | None, Header(description="t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>")
    ] = None,
) -> Any:
    """Signed with your webhook secret; idempotent on `event_id`. Answers once the conversion is
    durable; attribution and rewards follow within moments (see GET /v1/conversions/{id})."""
    # Served by the lean endpoint in front of FastAPI (app/routes/postback.py), which also
    # applies the merchant's rate limit; this route documents the operation and answers the
    # same way if it is ever reached.
    answer = await intake.receive_postback(
        secrets, buffer, anonymize, None, x_referral_merchant, x_referral_signature,
        await request.body(), datetime.now(UTC),
    )  # fmt: skip
    headers = {k.decode(): v.decode() for k, v in answer.headers}
    return JSONResponse(answer.body, status_code=202, headers=headers)


@router.get("/v1/conversions/{conversion_id}", response_model=ConversionView)
async def read_conversion(
    conversion_id: UUID, merchant: CurrentMerchant, pool: Pool, redis: RedisConn,
    settings: AppSettings,
) -> Any:  # fmt: skip
    return await intake.read_conversion(
        pool, redis, settings.conversion_stream, merchant.id, conversion_id
    )


@router.get(
    "/t/pixel.gif", response_class=Response, responses={200: {"content": {"image/gif": {}}}}
)
async def order_pixel(
    request: Request,
    settings: AppSettings,
    secrets: WebhookSecrets,
    buffer: ConversionBuffer,
    query: Annotated[PixelQuery, Query()],
) -> Response:
    """For the order-confirmation page: `<img src="https://go.yourshop.com/t/pixel.gif?m=…&order_id=…">`.

    It links our attribution cookie to the order. The tracking domain must be same-site with the
    shop (a subdomain, e.g. go.yourshop.com) so the browser sends the cookie. A pixel alone is
    unverified and earns nothing; the signed postback for the order is attributed with it.
    """
    # Served by the lean endpoint in front of FastAPI (app/routes/pixel.py); this route
    # documents the operation and answers the same way if it is ever reached.
    visitor = request.cookies.get(settings.cookie_name, "")
    await intake.accept_pixel(secrets, buffer, query.m, query.order_id, query.amount_minor,
                              query.currency, visitor, datetime.now(UTC))  # fmt: skip
    return Response(PIXEL, media_type="image/gif", headers={"cache-control": "no-store"})
