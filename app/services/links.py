"""Enrolling advocates and issuing their tracked links, and writing link changes through to
Redis (where the redirect reads them) via the outbox in app/storage/link_outbox.py."""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

import asyncpg

from app.destinations import is_allowed
from app.errors import InvalidInput
from app.keyring import Keyring
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient
from app.security import email_prints, hash_email
from app.services import experiments as experiments_service
from app.services import merchant_keys
from app.services.tenancy import found
from app.services.tx import transaction
from app.storage import advocates as advocates_repo
from app.storage import clicks as clicks_repo
from app.storage import link_outbox
from app.storage import links as links_repo
from app.storage import programs as programs_repo
from app.storage.link_cache import publish_link
from app.storage.rows import AdvocateRow, LinkRow

log = logging.getLogger(__name__)

# How often each API process retries link changes Redis has not taken yet.
RELAY_INTERVAL_SECONDS = 2.0


async def _write_through(
    pool: asyncpg.Pool, redis: RedisClient, code: str, queued_at: datetime
) -> None:
    """One committed link change to Redis, then out of the outbox (unless queued again since).
    Raises while Redis is unavailable: the row stays for the relay."""
    record = await links_repo.redirect_record(pool, code)
    if record is not None:
        await publish_link(redis, code, record)
    await link_outbox.done(pool, code, queued_at)


async def deliver(
    pool: asyncpg.Pool, redis: RedisClient, codes: list[str], queued_at: datetime
) -> None:
    """Write committed link changes through to Redis; what Redis refuses stays in the outbox
    for the relay (the change itself is committed: the caller is not failed for it)."""
    for code in codes:
        try:
            await _write_through(pool, redis, code, queued_at)
        except REDIS_UNAVAILABLE as exc:
            log.warning("link change queued for redis", extra={"code": code, "error": repr(exc)})
            return


async def queue_link_changes(conn: asyncpg.Connection, codes: list[str]) -> datetime:
    """Record, in the caller's transaction, that these links' redirect records changed; after
    the commit, `deliver` writes them through (the relay, if Redis refuses)."""
    return await link_outbox.queue(conn, codes)


async def relay_link_changes(pool: asyncpg.Pool, redis: RedisClient, limit: int = 500) -> int:
    """Write through what the outbox holds (changes Redis refused at first). Returns how many
    were delivered. Idempotent: several replicas relaying the same change write it twice."""
    pending = await link_outbox.pending(pool, limit)
    for code, queued_at in pending:
        await _write_through(pool, redis, code, queued_at)  # raises while Redis is down
    return len(pending)


async def enroll_advocate(
    pool: asyncpg.Pool,
    redis: RedisClient,
    merchant_id: UUID,
    program_id: UUID,
    *,
    external_id: str,
    name: str,
    email: str | None,
    keyring: Keyring,
) -> tuple[AdvocateRow, list[LinkRow], bool]:
    """Enroll (or find) the advocate; a new advocate gets a default link. Returns
    (advocate, links, created)."""
    queued_at = None
    async with transaction(pool) as conn:
        program = found(
            await programs_repo.get_program(conn, merchant_id, program_id), "program", "program_id"
        )
        keys = await merchant_keys.keys_of(conn, keyring, merchant_id)
        assert keys is not None  # the merchant authenticated
        advocate, created = await advocates_repo.enroll_advocate(
            conn,
            merchant_id,
            program_id,
            external_id=external_id,
            name=name,
            email_hash=hash_email(keys.email_key, email) if email else None,
            email_prints=email_prints(keys.email_key, email) if email else None,
        )
        if created:
            await experiments_service.assign_new_advocate(conn, program_id, advocate["id"])
        # Read back with the offer (the experiment's variant) it has now.
        advocate = found(
            await advocates_repo.get_advocate(conn, merchant_id, advocate["id"]), "advocate",
            "advocate_id",
        )  # fmt: skip
        if created:
            link = await links_repo.create_link(
                conn,
                merchant_id,
                program_id=program_id,
                advocate_id=advocate["id"],
                destination=program["destination_url"],
                channel="default",
            )
            queued_at = await link_outbox.queue(conn, [link["code"]])
        links = await links_repo.list_advocate_links(conn, merchant_id, advocate["id"])
    if queued_at is not None:
        await deliver(pool, redis, [link["code"] for link in links], queued_at)
    return advocate, links, created


async def issue_link(
    pool: asyncpg.Pool,
    redis: RedisClient,
    merchant_id: UUID,
    advocate_id: UUID,
    *,
    channel: str,
    destination: str | None,
) -> LinkRow:
    async with transaction(pool) as conn:
        advocate = found(
            await advocates_repo.get_advocate(conn, merchant_id, advocate_id),
            "advocate",
            "advocate_id",
        )
        program = await programs_repo.get_program(conn, merchant_id, advocate["program_id"])
        assert program is not None  # an advocate's program is the merchant's
        target = destination or program["destination_url"]
        if not is_allowed(target, program["allowed_domains"]):
            raise InvalidInput(
                "destination must be on one of the program's allowed_domains "
                f"({', '.join(program['allowed_domains'])})",
                field="body.destination",
            )
        link = await links_repo.create_link(
            conn,
            merchant_id,
            program_id=advocate["program_id"],
            advocate_id=advocate_id,
            destination=target,
            channel=channel,
        )
        queued_at = await link_outbox.queue(conn, [link["code"]])
    await deliver(pool, redis, [link["code"]], queued_at)
    return link


async def set_link_active(
    pool: asyncpg.Pool, redis: RedisClient, merchant_id: UUID, link_id: UUID, active: bool
) -> LinkRow:
    """Switch a link on or off. Committed with its outbox row; every API process stops (or
    starts) redirecting it at once when Redis takes the write-through, within the relay's
    interval after Redis recovers when it does not, and within the in-process cache's TTL for
    a process that missed the invalidation message."""
    async with transaction(pool) as conn:
        link = found(
            await links_repo.set_link_active(conn, merchant_id, link_id, active), "link", "link_id"
        )
        queued_at = await link_outbox.queue(conn, [link["code"]])
    await deliver(pool, redis, [link["code"]], queued_at)
    return link


async def republish_program_links(pool: asyncpg.Pool, redis: RedisClient, program_id: UUID) -> None:
    async with transaction(pool) as conn:
        codes = [
            r["code"]
            for r in await conn.fetch("SELECT code FROM links WHERE program_id = $1", program_id)
        ]
        queued_at = await link_outbox.queue(conn, codes)
    await deliver(pool, redis, codes, queued_at)


async def get_advocate(
    pool: asyncpg.Pool, merchant_id: UUID, advocate_id: UUID
) -> tuple[AdvocateRow, list[LinkRow]]:
    """The advocate and their links."""
    advocate = found(
        await advocates_repo.get_advocate(pool, merchant_id, advocate_id), "advocate", "advocate_id"
    )
    return advocate, await links_repo.list_advocate_links(pool, merchant_id, advocate_id)


async def get_link(pool: asyncpg.Pool, merchant_id: UUID, link_id: UUID) -> LinkRow:
    return found(await links_repo.get_link(pool, merchant_id, link_id), "link", "link_id")


async def get_link_with_clicks(
    pool: asyncpg.Pool, merchant_id: UUID, link_id: UUID
) -> tuple[LinkRow, dict[str, int]]:
    link = await get_link(pool, merchant_id, link_id)
    return link, await clicks_repo.count_link_clicks(pool, merchant_id, link_id)
