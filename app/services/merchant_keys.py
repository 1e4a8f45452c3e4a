"""Each merchant's secrets, encrypted at rest under the server's data keys (app/keyring.py): the
postback signing secret (HMAC needs the secret itself, so it is kept, encrypted) and the key its
emails are hashed under (app/security.hash_email).

A merchant from before these keys (keys_version 0: plain secret, bare SHA-256 email hashes) is
upgraded in one transaction, by `referral migrate` or on first use: the secret is encrypted, a key
is made, and every stored email hash is re-keyed (HMAC over the old hash, which is the first step
of the new one), so self-referral detection keeps matching and no email is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app.keyring import Keyring
from app.security import new_email_key, new_webhook_secret, rekey_email_hash, rekey_near
from app.services.tx import transaction
from app.storage import merchants as repo

KEYS_VERSION = 1


@dataclass(frozen=True, slots=True)
class MerchantKeys:
    webhook_secret: str
    email_key: bytes


@dataclass(frozen=True, slots=True)
class SealedKeys:
    """What is stored: both secrets encrypted."""

    webhook_secret_enc: str
    email_key_enc: str


def new_keys(keyring: Keyring) -> tuple[MerchantKeys, SealedKeys]:
    keys = MerchantKeys(new_webhook_secret(), new_email_key())
    return keys, SealedKeys(keyring.encrypt(keys.webhook_secret.encode()),
                            keyring.encrypt(keys.email_key))  # fmt: skip


def _open(keyring: Keyring, row: dict[str, str]) -> MerchantKeys:
    return MerchantKeys(keyring.decrypt(row["webhook_secret_enc"]).decode(),
                        keyring.decrypt(row["email_key_enc"]))  # fmt: skip


async def keys_of(
    db: asyncpg.Pool | asyncpg.Connection, keyring: Keyring, merchant_id: UUID
) -> MerchantKeys | None:
    """The merchant's secrets (None for an unknown merchant), upgrading it first if need be."""
    row = await repo.sealed_keys(db, merchant_id)
    if row is None:
        return None
    if row["keys_version"] == 0:
        if isinstance(db, asyncpg.Pool):
            async with transaction(db) as conn:
                await upgrade(conn, keyring, merchant_id)
        else:
            await upgrade(db, keyring, merchant_id)
        row = await repo.sealed_keys(db, merchant_id)
        assert row is not None
    return _open(keyring, row)


async def upgrade(conn: asyncpg.Connection, keyring: Keyring, merchant_id: UUID) -> bool:
    """Bring a keys_version 0 merchant to encrypted secrets and keyed email hashes (in the
    caller's transaction; the merchant row is locked, so two replicas upgrade it once)."""
    row = await repo.sealed_keys(conn, merchant_id, lock=True)
    if row is None or row["keys_version"] != 0:
        return False
    key = new_email_key()
    for table in repo.EMAIL_HASH_TABLES:
        rows = await repo.email_hashes(conn, table, merchant_id)
        await repo.rewrite_email_hashes(conn, table, [
            (r["id"],
             rekey_email_hash(key, r["email_hash"]) if r["email_hash"] else None,
             rekey_email_hash(key, r["canonical"]) if r["canonical"] else None,
             [rekey_near(key, n) for n in r["near"]])
            for r in rows
        ])  # fmt: skip
    sealed = SealedKeys(keyring.encrypt(row["webhook_secret"].encode()), keyring.encrypt(key))
    await repo.seal_keys(conn, merchant_id, sealed, KEYS_VERSION)
    return True


async def upgrade_all(pool: asyncpg.Pool, keyring: Keyring) -> int:
    """Upgrade every merchant still at keys_version 0, one transaction each. Returns how many."""
    done = 0
    for merchant_id in await repo.merchants_at_keys_version(pool, 0):
        async with transaction(pool) as conn:
            done += await upgrade(conn, keyring, merchant_id)
    return done


async def reencrypt_all(pool: asyncpg.Pool, keyring: Keyring) -> int:
    """Rewrite every merchant's sealed secrets under the newest data key (after adding one in
    front of DATA_KEYS; the old key can be removed once this has run). Returns how many."""
    done = 0
    for merchant_id in await repo.merchants_at_keys_version(pool, KEYS_VERSION):
        async with transaction(pool) as conn:
            row = await repo.sealed_keys(conn, merchant_id, lock=True)
            assert row is not None
            await repo.seal_keys(conn, merchant_id, SealedKeys(
                keyring.reencrypt(row["webhook_secret_enc"]),
                keyring.reencrypt(row["email_key_enc"])), KEYS_VERSION)  # fmt: skip
            done += 1
    return done
