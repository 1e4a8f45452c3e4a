"""Conversion postbacks from merchants' backends (signed), and reading their outcome."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.bounds import MAX_AMOUNT_MINOR, NO_CONTROL_CHARACTERS
from app.errors import NotFound
from app.events import is_click_id
from app.routes.deps import CurrentMerchant, Pool, RedisClient
from app.schemas import ConversionAccepted, ConversionIn, ConversionView
from app.services import conversions as service
from app.storage.conversions import get_conversion
from app.storage.event_buffer import EventsLost

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
    redis: RedisClient,
    x_referral_merchant: Annotated[str | None, Header(description="Your merchant id")] = None,
    x_referral_signature: Annotated[
        str | None, Header(description="t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>")
    ] = None,
) -> Any:
    """Signed with your webhook secret; idempotent on `event_id`. Answers once the conversion is
    durable; attribution and rewards follow within moments (see GET /v1/conversions/{id})."""
    state = request.app.state
    # Who claims to send it, before the body is read (the edge bounds its size).
    merchant_id, secret = await service.postback_merchant(
        state.webhook_secrets, x_referral_merchant
    )
    body = await request.body()
    now = datetime.now(UTC)
    await service.verify_postback(redis, secret, x_referral_signature, body, now)
    try:
        conversion = ConversionIn.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    conversion_id, duplicate = await service.accept_conversion(
        redis, state.conversion_buffer, merchant_id, conversion, state.anonymize_ip, now
    )
    status = "duplicate" if duplicate else "accepted"
    return JSONResponse({"id": str(conversion_id), "status": status}, status_code=202)


@router.get("/v1/conversions/{conversion_id}", response_model=ConversionView)
async def read_conversion(
    conversion_id: UUID, merchant: CurrentMerchant, pool: Pool, redis: RedisClient
) -> Any:
    found = await get_conversion(pool, merchant.id, conversion_id)
    if found is not None:
        return found
    if await service.is_queued(redis, merchant.id, conversion_id):
        return {"id": conversion_id, "state": "queued", "reason": "accepted, not processed yet"}
    raise NotFound("conversion not found", field="conversion_id")


# A transparent 1x1 GIF.
_PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


@router.get(
    "/t/pixel.gif", response_class=Response, responses={200: {"content": {"image/gif": {}}}}
)
async def order_pixel(
    request: Request,
    m: Annotated[UUID, Query(description="Your merchant id")],
    order_id: Annotated[str, Query(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)],
    amount_minor: Annotated[int | None, Query(ge=0, le=MAX_AMOUNT_MINOR)] = None,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
) -> Response:
    """For the order-confirmation page: `<img src="https://go.yourshop.com/t/pixel.gif?m=…&order_id=…">`.

    It links our attribution cookie to the order. The tracking domain must be same-site with the
    shop (a subdomain, e.g. go.yourshop.com) so the browser sends the cookie. A pixel alone is
    unverified and earns nothing; the signed postback for the order is attributed with it.
    """
    state = request.app.state
    if await state.webhook_secrets.get(m) is None:
        raise NotFound("unknown merchant", field="query.m")
    visitor = request.cookies.get(state.settings.cookie_name, "")
    if is_click_id(visitor):
        pixel = orjson.dumps(
            {
                "id": str(service.pixel_conversion_id(m, order_id)),
                "type": "pixel",
                "merchant_id": str(m),
                "order_id": order_id,
                "visitor_id": visitor,
                "amount_minor": amount_minor,
                "currency": currency,
                "received_at": datetime.now(UTC).isoformat(),
            }
        )
        with contextlib.suppress(EventsLost):  # counted by the buffer; the image is shown
            await state.conversion_buffer.add(pixel)
    return Response(_PIXEL, media_type="image/gif", headers={"cache-control": "no-store"})
