"""The review queue: what the fraud rules held, and a person's decision on it.

Each decision is one transaction over the item, its conversion's rewards (locked in id order, as
every ledger move is) and, for a ban, the advocate and all their rewards:
- approve: the held amounts go back to pending, where their normal hold goes on (the scheduler
  approves them when it is over — at once, if it already is);
- reject: what the conversion's rewards hold in pending or held is rejected, with the note;
- ban_advocate: the advocate is banned (their links stop redirecting: the link records are
  written through Redis after the commit, via the link outbox), every pending and held amount of
  theirs is rejected, their other open items are closed as banned, and later conversions earn
  nothing (app/attribution/fraud.py reads the ban).
A decision records the API key that made it, when, and the note; making the same decision again
answers the same item (idempotent), a different one is a 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from app.attribution.ledger import LedgerAction
from app.errors import Conflict
from app.pipeline.redis_client import RedisClient
from app.services import links as links_service
from app.services.rewards import move_all
from app.services.tenancy import found
from app.services.tx import transaction
from app.storage import conversions as conversions_repo
from app.storage import review as review_repo
from app.storage import rewards as rewards_repo
from app.storage.merchants import Merchant

ReviewDecision = Literal["approve", "reject", "ban_advocate"]
STATUS_OF: dict[str, str] = {"approve": "approved", "reject": "rejected", "ban_advocate": "banned"}


async def list_items(
    pool: asyncpg.Pool, merchant_id: UUID, *, status: str, program: UUID | None,
    advocate: UUID | None, rule: str | None, cursor: UUID | None, limit: int,
) -> dict[str, Any]:  # fmt: skip
    after = None
    if cursor is not None:
        after = found(
            await review_repo.position(pool, merchant_id, cursor), "cursor item", "query.cursor"
        )
    items = await review_repo.list_items(
        pool, merchant_id, status=status, program=program, advocate=advocate, rule=rule,
        after=after, limit=limit + 1,
    )  # fmt: skip
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": items[-1]["id"] if items and more else None}


async def get_item(pool: asyncpg.Pool, merchant_id: UUID, item_id: UUID) -> dict[str, Any]:
    """The item with its conversion's full evidence: attribution, fraud findings, rewards."""
    item = found(await review_repo.get_item(pool, merchant_id, item_id), "review item", "item_id")
    conversion = await conversions_repo.get_conversion(pool, merchant_id, item["conversion_id"])
    assert conversion is not None  # the item references it
    return {**item, "conversion": conversion}


async def decide(
    pool: asyncpg.Pool, redis: RedisClient, merchant: Merchant, item_id: UUID,
    decision: ReviewDecision, note: str, now: datetime,
) -> dict[str, Any]:  # fmt: skip
    status = STATUS_OF[decision]
    codes: list[str] = []
    queued_at = None
    async with transaction(pool) as conn:
        item = found(
            await review_repo.get_item(conn, merchant.id, item_id, lock=True), "review item",
            "item_id",
        )  # fmt: skip
        if item["status"] == status:
            pass  # made already: the same answer
        elif item["status"] != "open":
            raise Conflict(
                f"the item was already decided ({item['status']}); a decision is final",
                field="body.decision",
            )
        elif decision == "ban_advocate":
            codes = await _ban(conn, merchant, item, note, now)
            if codes:
                queued_at = await links_service.queue_link_changes(conn, codes)
        else:
            action = LedgerAction.RELEASE if decision == "approve" else LedgerAction.REFUSE
            await rewards_repo.lock_rewards_of_conversion(conn, merchant.id, item["conversion_id"])
            rewards = await rewards_repo.rewards_of_conversion(
                conn, merchant.id, item["conversion_id"]
            )
            await move_all(conn, merchant.id, [r["id"] for r in rewards], action,
                            _reason(decision, note))  # fmt: skip
            await review_repo.resolve(conn, [item_id], status, merchant.key_id, note, now)
    if queued_at is not None:
        # Committed: now every API process stops redirecting the advocate's links.
        await links_service.deliver(pool, redis, codes, queued_at)
    return await get_item(pool, merchant.id, item_id)


async def _ban(
    conn: asyncpg.Connection, merchant: Merchant, item: dict[str, Any], note: str, now: datetime
) -> list[str]:
    advocate = item["advocate_id"]
    reason = note or "banned after review"
    codes = await review_repo.ban_advocate(conn, merchant.id, advocate, reason, now)
    reward_ids = await review_repo.lock_rewards_of_advocate(conn, merchant.id, advocate)
    await move_all(conn, merchant.id, reward_ids, LedgerAction.REFUSE,
                    _reason("ban_advocate", note))  # fmt: skip
    items = await review_repo.open_items_of_advocate(conn, merchant.id, advocate)
    await review_repo.resolve(conn, items, "banned", merchant.key_id, note, now)
    return codes


def _reason(decision: str, note: str) -> str:
    words = {"approve": "released after review", "reject": "rejected after review",
             "ban_advocate": "advocate banned after review"}[decision]  # fmt: skip
    return f"{words}: {note}" if note else words
