"""Payment providers: a merchant's Stripe and Shopify signing secrets, and the endpoints those
providers deliver their webhooks to (app/services/integrations.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response
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
from app.schemas import Integration, IntegrationSecret, ProviderReceipt
from app.services import integrations as service
from app.services.integrations import Provider

router = APIRouter(tags=["integrations"])


@router.put("/v1/integrations/{provider}", response_model=Integration)
async def configure(
    provider: Provider, body: IntegrationSecret, merchant: CurrentMerchant, pool: Pool,
    settings: AppSettings,
) -> Any:  # fmt: skip
    """Store the provider's signing secret (Stripe: the endpoint's `whsec_…`; Shopify: the app's
    client secret). Point the provider at `webhook_url`."""
    return await service.configure(pool, settings, merchant.id, provider, body.signing_secret)


@router.get("/v1/integrations", response_model=list[Integration])
async def list_integrations(merchant: CurrentMerchant, pool: Pool, settings: AppSettings) -> Any:
    return await service.list_integrations(pool, settings, merchant.id)


@router.delete("/v1/integrations/{provider}", status_code=204)
async def remove(provider: Provider, merchant: CurrentMerchant, pool: Pool) -> Response:
    await service.remove(pool, merchant.id, provider)
    return Response(status_code=204)


@router.post(
    "/v1/integrations/{provider}/{merchant_id}/events",
    response_model=ProviderReceipt,
    status_code=202,
    responses={200: {"model": ProviderReceipt, "description": "Not a conversion: ignored."}},
)
async def receive(
    provider: Provider, merchant_id: UUID, request: Request, pool: Pool, redis: RedisConn,
    buffer: ConversionBuffer, secrets: WebhookSecrets, settings: AppSettings,
    anonymize: Anonymizer,
) -> Any:  # fmt: skip
    """Where Stripe or Shopify delivers its webhooks (no API key: the provider's signature).
    202 once the conversion is durable; 200 for an event that is not one."""
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    receipt = await service.receive(
        pool, redis, buffer, secrets, settings, anonymize, provider, merchant_id, body, headers,
        datetime.now(UTC),
    )  # fmt: skip
    status = 200 if receipt["status"] == "ignored" else 202
    return JSONResponse(ProviderReceipt.model_validate(receipt).model_dump(mode="json"),
                        status_code=status)  # fmt: skip
