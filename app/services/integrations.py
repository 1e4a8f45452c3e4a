"""Payment providers' webhooks in: the merchant stores the provider's signing secret; each
delivery is verified the provider's way (app/providers/), mapped to a postback's body, validated
exactly like one (app/schemas.ConversionIn: the same bounds, the same 422 naming the field), and
accepted through the same intake (durable before the answer, idempotent on the provider's event
id). An event that is not a conversion is acknowledged with the reason, so the provider does not
retry it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
from pydantic import ValidationError

from app.errors import InvalidInput, NotFound, Unauthorized
from app.pipeline.event_buffer import EventBuffer
from app.pipeline.redis_client import RedisClient
from app.providers import Mapped, ProviderSignatureError
from app.providers import shopify as shopify_provider
from app.providers import stripe as stripe_provider
from app.schemas import ConversionIn
from app.security import IpAnonymizer
from app.services import intake
from app.services.tx import transaction
from app.settings import Settings
from app.storage import integrations as repo

Provider = Literal["stripe", "shopify"]


class ProviderSignatureRejected(Unauthorized):
    code = "invalid_signature"


async def configure(pool: asyncpg.Pool, settings: Settings, merchant: UUID, provider: Provider,
                    secret: str) -> dict[str, Any]:  # fmt: skip
    async with transaction(pool) as conn:
        await repo.put(conn, merchant, provider, settings.keyring.encrypt(secret.encode()))
    return _view(settings, merchant, provider)


def _view(settings: Settings, merchant: UUID, provider: str) -> dict[str, Any]:
    base = settings.public_base_url.rstrip("/")
    return {"provider": provider,
            "webhook_url": f"{base}/v1/integrations/{provider}/{merchant}/events"}  # fmt: skip


async def list_integrations(pool: asyncpg.Pool, settings: Settings,
                            merchant: UUID) -> list[dict[str, Any]]:  # fmt: skip
    return [{**row, **_view(settings, merchant, row["provider"])}
            for row in await repo.list_for(pool, merchant)]  # fmt: skip


async def remove(pool: asyncpg.Pool, merchant: UUID, provider: Provider) -> None:
    async with transaction(pool) as conn:
        if not await repo.delete(conn, merchant, provider):
            raise NotFound(f"no {provider} integration", field="provider")


async def receive(
    pool: asyncpg.Pool, redis: RedisClient, buffer: EventBuffer, secrets: intake.SecretCache,
    settings: Settings, anonymize: IpAnonymizer, provider: Provider, merchant_id: UUID,
    payload: bytes, headers: dict[str, str], now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """{"status": "accepted" | "duplicate", "id"} or {"status": "ignored", "reason"}."""
    sealed = await repo.secret_of(pool, merchant_id, provider)
    keys = await secrets.get(merchant_id)
    if sealed is None or keys is None:
        # Unknown merchant, or no such integration: the same answer (nothing to learn).
        raise ProviderSignatureRejected(f"no {provider} integration here",
                                        field="merchant_id")  # fmt: skip
    secret = settings.keyring.decrypt(sealed).decode()
    try:
        if provider == "stripe":
            event = stripe_provider.verify(payload, headers.get("stripe-signature"), secret)
            mapped: Mapped = stripe_provider.map_event(event)
        else:
            order = shopify_provider.verify(payload, headers.get("x-shopify-hmac-sha256"),
                                            secret)  # fmt: skip
            mapped = shopify_provider.map_event(headers.get("x-shopify-topic"), order)
    except ProviderSignatureError as exc:
        field = "stripe-signature" if provider == "stripe" else "x-shopify-hmac-sha256"
        raise ProviderSignatureRejected(str(exc), field=field) from None
    if mapped.body is None:
        return {"status": "ignored", "reason": mapped.ignored}
    try:
        body = ConversionIn.model_validate({k: v for k, v in mapped.body.items() if v is not None})
    except ValidationError as exc:
        # What the provider sent cannot be a conversion (no currency, an amount out of bounds):
        # refused like a postback, naming the field of the mapped conversion.
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"the {provider} event maps to an invalid conversion: "
                           f"{where or 'body'}: {first['msg']}",
                           field=f"body.{where}" if where else "body") from None  # fmt: skip
    answer = await intake.accept_conversion(
        buffer, merchant_id, keys.email_key, body, anonymize, now
    )
    return {"status": answer.body["status"], "id": UUID(answer.body["id"])}
