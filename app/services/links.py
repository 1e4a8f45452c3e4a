"""Enrolling advocates and issuing their tracked links."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from app.destinations import is_allowed
from app.errors import InvalidInput, NotFound
from app.security import hash_email
from app.storage import advocates as advocates_repo
from app.storage import links as links_repo
from app.storage import programs as programs_repo
from app.storage.link_cache import publish_link
from app.storage.redis_client import RedisClient


async def _publish(pool: asyncpg.Pool, redis: RedisClient, link: dict[str, Any]) -> None:
    record = await links_repo.redirect_record(pool, link["code"])
    if record is not None:
        await publish_link(redis, link["code"], record)


async def enroll_advocate(
    pool: asyncpg.Pool,
    redis: RedisClient,
    merchant_id: UUID,
    program_id: UUID,
    *,
    external_id: str,
    name: str,
    email: str | None,
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """Enroll (or find) the advocate; a new advocate gets a default link. Returns
    (advocate, links, created)."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            program = await programs_repo.get_program(conn, merchant_id, program_id)
            if program is None:
                raise NotFound("program not found", field="program_id")
            advocate, created = await advocates_repo.enroll_advocate(
                conn,
                merchant_id,
                program_id,
                external_id=external_id,
                name=name,
                email_hash=hash_email(email) if email else None,
            )
            if created:
                await links_repo.create_link(
                    conn,
                    merchant_id,
                    program_id=program_id,
                    advocate_id=advocate["id"],
                    destination=program["destination_url"],
                    channel="default",
                )
        links = await links_repo.list_advocate_links(conn, merchant_id, advocate["id"])
    if created:
        for link in links:
            await _publish(pool, redis, link)
    return advocate, links, created


async def issue_link(
    pool: asyncpg.Pool,
    redis: RedisClient,
    merchant_id: UUID,
    advocate_id: UUID,
    *,
    channel: str,
    destination: str | None,
) -> dict[str, Any]:
    async with pool.acquire() as conn:
        advocate = await advocates_repo.get_advocate(conn, merchant_id, advocate_id)
        if advocate is None:
            raise NotFound("advocate not found", field="advocate_id")
        program = await programs_repo.get_program(conn, merchant_id, advocate["program_id"])
        assert program is not None
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
    await _publish(pool, redis, link)
    return link


async def set_link_active(
    pool: asyncpg.Pool, redis: RedisClient, merchant_id: UUID, link_id: UUID, active: bool
) -> dict[str, Any]:
    link = await links_repo.set_link_active(pool, merchant_id, link_id, active)
    if link is None:
        raise NotFound("link not found", field="link_id")
    await _publish(pool, redis, link)
    return link


async def republish_program_links(pool: asyncpg.Pool, redis: RedisClient, program_id: UUID) -> None:
    codes = await pool.fetch("SELECT code FROM links WHERE program_id = $1", program_id)
    for row in codes:
        await _publish(pool, redis, {"code": row["code"]})
