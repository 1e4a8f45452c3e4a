"""Creating merchants (tenants) and issuing their API keys: the secrets are shown once, and only
hashes are stored (the webhook secret is needed to verify signatures, so it is kept)."""

from __future__ import annotations

import asyncpg

from app.security import new_api_key, new_webhook_secret
from app.services.tx import transaction
from app.storage import merchants as merchants_repo
from app.storage.merchants import CreatedMerchant


async def create_merchant(pool: asyncpg.Pool, name: str) -> CreatedMerchant:
    key = new_api_key()
    secret = new_webhook_secret()
    async with transaction(pool) as conn:
        merchant_id = await merchants_repo.insert_merchant(conn, name, secret)
        await merchants_repo.insert_api_key(conn, merchant_id, key, "initial")
    return CreatedMerchant(id=merchant_id, name=name, api_key=key.key, webhook_secret=secret)
