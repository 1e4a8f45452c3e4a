"""Conversion postbacks from merchants' backends (signed), and reading their outcome."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.errors import NotFound
from app.routes.deps import CurrentMerchant, Pool, RedisClient
from app.schemas import ConversionAccepted, ConversionIn, ConversionView
from app.services import conversions as service
from app.storage.conversions import get_conversion

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
    body = await request.body()
    now = datetime.now(UTC)
    state = request.app.state
    merchant_id = await service.verify_postback(
        state.webhook_secrets, redis, x_referral_merchant, x_referral_signature, body, now
    )
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
