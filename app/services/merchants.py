"""Creating merchants (tenants) and issuing their API keys: the secrets are shown once; API keys
are stored as hashes, the postback secret and the email-hashing key encrypted
(app/services/merchant_keys.py)."""

from __future__ import annotations

import asyncpg

from app.keyring import Keyring
from app.security import new_api_key
from app.services.merchant_keys import KEYS_VERSION, new_keys
from app.services.tx import transaction
from app.storage import merchants as merchants_repo
from app.storage.merchants import CreatedMerchant


async def create_merchant(pool: asyncpg.Pool, keyring: Keyring, name: str) -> CreatedMerchant:
    key = new_api_key()
    keys, sealed = new_keys(keyring)
    async with transaction(pool) as conn:
        merchant_id = await merchants_repo.insert_merchant(
            conn, name, sealed.webhook_secret_enc, sealed.email_key_enc, KEYS_VERSION
        )
        await merchants_repo.insert_api_key(conn, merchant_id, key, "initial")
    return CreatedMerchant(id=merchant_id, name=name, api_key=key.key,
                           webhook_secret=keys.webhook_secret)  # fmt: skip
