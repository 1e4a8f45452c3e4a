"""Outgoing webhook endpoints, their delivery log, and the event feed
(app/services/webhooks.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response

from app.event_types import EventType
from app.routes.deps import AppSettings, CurrentMerchant, Pool
from app.schemas import (
    EventPage,
    Queued,
    SecretRotation,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookEndpointCreate,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
)
from app.services import webhooks as service

router = APIRouter(tags=["webhooks"])
_ENDPOINT = "/v1/webhook-endpoints/{endpoint_id}"


@router.post("/v1/webhook-endpoints", status_code=201, response_model=WebhookEndpointWithSecret)
async def create_endpoint(
    body: WebhookEndpointCreate, merchant: CurrentMerchant, pool: Pool, settings: AppSettings
) -> Any:
    """Events are POSTed there signed the Standard Webhooks way (`webhook-id`,
    `webhook-timestamp`, `webhook-signature`); verify them with the `standardwebhooks` library
    and the secret shown here once."""
    return await service.create_endpoint(
        pool, settings, merchant.id, body.url, list(body.event_types), body.description
    )


@router.get("/v1/webhook-endpoints", response_model=list[WebhookEndpoint])
async def list_endpoints(merchant: CurrentMerchant, pool: Pool) -> Any:
    return await service.list_endpoints(pool, merchant.id)


@router.get(_ENDPOINT, response_model=WebhookEndpoint)
async def get_endpoint(endpoint_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    return await service.get_endpoint(pool, merchant.id, endpoint_id)


@router.patch(_ENDPOINT, response_model=WebhookEndpoint)
async def update_endpoint(
    endpoint_id: UUID, body: WebhookEndpointUpdate, merchant: CurrentMerchant, pool: Pool,
    settings: AppSettings,
) -> Any:  # fmt: skip
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    return await service.update_endpoint(pool, settings, merchant.id, endpoint_id, changes)


@router.delete(_ENDPOINT, status_code=204)
async def delete_endpoint(endpoint_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Response:
    await service.delete_endpoint(pool, merchant.id, endpoint_id)
    return Response(status_code=204)


@router.post(f"{_ENDPOINT}/rotate-secret", response_model=WebhookEndpointWithSecret)
async def rotate_secret(
    endpoint_id: UUID, body: SecretRotation, merchant: CurrentMerchant, pool: Pool,
    settings: AppSettings,
) -> Any:  # fmt: skip
    """A new secret (shown once); the old one keeps signing beside it for `overlap_seconds`."""
    return await service.rotate_secret(pool, settings.keyring, merchant.id, endpoint_id,
                                       body.overlap_seconds, datetime.now(UTC))  # fmt: skip


@router.post(f"{_ENDPOINT}/test", status_code=202, response_model=Queued)
async def send_test(endpoint_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    """Queue a `webhook.test` event for this endpoint alone."""
    await service.send_test(pool, merchant.id, endpoint_id, datetime.now(UTC))
    return {"status": "queued"}


@router.get(f"{_ENDPOINT}/attempts", response_model=list[WebhookAttempt])
async def list_attempts(
    endpoint_id: UUID, merchant: CurrentMerchant, pool: Pool,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> Any:  # fmt: skip
    """The delivery log, newest first: status, latency and the start of the answer."""
    return await service.deliveries(pool, merchant.id, endpoint_id, limit, before)


@router.post(
    "/v1/webhook-deliveries/{delivery_id}/redeliver", status_code=202, response_model=Queued
)
async def redeliver(delivery_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    """Send a delivery again (delivered or given up), with the same webhook-id."""
    await service.redeliver(pool, merchant.id, delivery_id, datetime.now(UTC))
    return {"status": "queued"}


@router.get("/v1/events", response_model=EventPage)
async def list_events(
    merchant: CurrentMerchant, pool: Pool,
    after: Annotated[int, Query(ge=0, le=2**62, description="A cursor; 0: the oldest kept")] = 0,
    types: Annotated[list[EventType] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:  # fmt: skip
    """Every event, in order: what webhooks deliver, for a consumer to catch up on."""
    return await service.feed(pool, merchant.id, after, list(types) if types else None, limit)
