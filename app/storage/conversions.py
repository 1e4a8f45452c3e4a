"""Conversions in PostgreSQL: the flusher's sink for the "conversions" stream, and reads.

Each conversion is processed in its own transaction: stored once (its id is derived from the
merchant's event id, so a re-delivery is a no-op), attributed from the evidence in PostgreSQL,
and its rewards (or refund reversals) written to the ledger. Before a batch is processed, the
flusher waits until every click that entered the Redis click streams before the batch's
conversions entered theirs has been stored, so a conversion posted a millisecond after its click
still finds it. (Both times are Redis's, from the entry ids. The API keeps the order when Redis
fails: while clicks wait in its spool, conversions are spooled behind them.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.attribution.model import (
    Advocate,
    Attributed,
    Click,
    Customer,
    Evidence,
    ProgramTerms,
    attribute,
)
from app.attribution.rewards import NoReward, Sale, compute_rewards, reversal_amount
from app.attribution.rules import ProgramRules
from app.codes import normalize_referral_code
from app.events import click_time
from app.storage import dead_letters
from app.storage import rewards as rewards_repo
from app.storage.db import is_transient
from app.storage.flusher import Batch, RetryLater, entry_ms
from app.storage.redis_client import RedisClient
from app.storage.rules import current_rules

log = logging.getLogger(__name__)

# How far back the browser's clicks are looked up (the longest window a program may have).
_LOOKBACK = timedelta(days=366)

_CLICK_COLUMNS = (
    "c.click_id, c.clicked_at, c.link_id, c.is_bot, c.visitor_id,"
    " a.id AS advocate_id, a.program_id, a.external_id, a.email_hash"
)


def _click(row: asyncpg.Record) -> Click:
    advocate = Advocate(
        row["advocate_id"], row["program_id"], row["external_id"], row["email_hash"]
    )
    return Click(row["click_id"], row["clicked_at"], row["link_id"], advocate, row["is_bot"])


class ConversionStore:
    def __init__(
        self,
        redis: RedisClient,
        click_streams: list[str],
        wait_seconds: float = 10.0,
        stream: str = "conversions",
    ) -> None:
        self._redis = redis
        self._click_streams = click_streams
        self._wait_seconds = wait_seconds
        self._stream = stream

    async def prepare(self, conn: asyncpg.Connection) -> None:
        return None

    async def _clicks_flushed_until(self, entered_ms: int) -> None:
        """Wait until the click streams hold nothing that entered them by `entered_ms`
        (acknowledged clicks are deleted, so a stream's first entry is its oldest click not yet
        stored)."""
        deadline = time.monotonic() + self._wait_seconds
        while True:
            heads = [await self._redis.xrange(s, count=1) for s in self._click_streams]
            if all(not h or entry_ms(h[0][0]) > entered_ms for h in heads):
                return
            if time.monotonic() > deadline:
                raise RetryLater("clicks older than these conversions are not stored yet")
            await asyncio.sleep(0.02)

    async def store(self, conn: asyncpg.Connection, batch: Batch) -> int:
        events: list[dict[str, Any]] = batch.events
        await self._clicks_flushed_until(batch.entered_until_ms())
        stored = 0
        for event in events:
            try:
                async with conn.transaction():
                    stored += await process_conversion(conn, event)
            except Exception as exc:
                if is_transient(exc):
                    raise  # outage, deadlock, failover: the flusher retries the batch
                # One conversion that cannot be processed must not hold back the others: it is
                # set aside, with the error, for a person to look at and replay.
                log.exception("conversion moved to dead letters", extra={"id": event.get("id")})
                await dead_letters.add(conn, self._stream, [event], repr(exc))
        return stored


async def process_conversion(conn: asyncpg.Connection, e: dict[str, Any]) -> int:
    """Store, attribute and reward one conversion; 0 when it was already stored."""
    if e["type"] == "pixel":
        return await _record_pixel(conn, e)
    inserted = await conn.fetchval(
        """
        INSERT INTO conversions (id, merchant_id, event_id, type, order_id, refund_of,
            customer_id, customer_email_hash, amount_minor, currency, click_id, referral_code,
            ip_hash, ip_prefix, user_agent, occurred_at, received_at, state)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                'unattributed')
        ON CONFLICT DO NOTHING RETURNING id
        """,
        UUID(e["id"]), UUID(e["merchant_id"]), e["event_id"], e["type"], e["order_id"],
        e["refund_of"], e["customer_id"],
        bytes.fromhex(e["customer_email_hash"]) if e["customer_email_hash"] else None,
        e["amount_minor"] or 0, e["currency"], e["click_id"], e["referral_code"],
        bytes.fromhex(e["ip_hash"]) if e["ip_hash"] else None, e["ip_prefix"], e["user_agent"],
        datetime.fromisoformat(e["occurred_at"]), datetime.fromisoformat(e["received_at"]),
    )  # fmt: skip
    if inserted is None:
        return 0
    if e["type"] == "refund":
        await _apply_refund(conn, e)
    else:
        await _attribute_and_reward(conn, e)
        if e["order_id"]:
            await conn.execute(
                "UPDATE conversions SET state = 'superseded',"
                " reason = 'a signed postback for this order arrived' WHERE merchant_id = $1"
                " AND order_id = $2 AND NOT verified AND state <> 'superseded'",
                UUID(e["merchant_id"]),
                e["order_id"],
            )
    return 1


async def _record_pixel(conn: asyncpg.Connection, e: dict[str, Any]) -> int:
    """Keep the pixel's browser for this order; without a postback yet, record an unverified
    conversion (attributed for statistics, no reward)."""
    merchant = UUID(e["merchant_id"])
    stored = await conn.fetchval(
        "INSERT INTO order_pixels (merchant_id, order_id, visitor_id, amount_minor, currency,"
        " seen_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING order_id",
        merchant, e["order_id"], UUID(e["visitor_id"]), e["amount_minor"], e["currency"],
        datetime.fromisoformat(e["received_at"]),
    )  # fmt: skip
    if stored is None:
        return 0
    postback = await conn.fetchval(
        "SELECT 1 FROM conversions WHERE merchant_id = $1 AND order_id = $2 AND verified",
        merchant,
        e["order_id"],
    )
    if postback:
        return 1
    unverified = {
        **e,
        **dict.fromkeys(("refund_of", "customer_id", "customer_email_hash", "click_id",
                         "referral_code", "ip_hash", "ip_prefix", "user_agent")),
        "type": "purchase",
        "event_id": f"pixel:{e['order_id']}",
        "occurred_at": e["received_at"],
        "amount_minor": e["amount_minor"] or 0,
    }  # fmt: skip
    await conn.execute(
        """
        INSERT INTO conversions (id, merchant_id, event_id, type, order_id, amount_minor, currency,
            visitor_id, occurred_at, received_at, state, verified)
        VALUES ($1, $2, $3, 'purchase', $4, $5, $6, $7, $8, $8, 'unattributed', false)
        ON CONFLICT DO NOTHING
        """,
        UUID(e["id"]), merchant, unverified["event_id"], e["order_id"], unverified["amount_minor"],
        e["currency"], UUID(e["visitor_id"]), datetime.fromisoformat(e["received_at"]),
    )  # fmt: skip
    evidence = await _evidence(conn, unverified, merchant)
    _, terms = await _program_terms(conn, evidence)
    result = attribute(evidence, terms)
    if isinstance(result, Attributed):
        await conn.execute(
            "UPDATE conversions SET state = 'attributed', program_id = $2, advocate_id = $3,"
            " attributed_click_id = $4, attribution_method = 'cookie', reason = $5 WHERE id = $1",
            UUID(e["id"]), result.advocate.program_id, result.advocate.id,
            result.click.click_id if result.click else None,
            "unverified (pixel only): attributed by cookie, no reward until a signed postback",
        )  # fmt: skip
    else:
        await conn.execute(
            "UPDATE conversions SET reason = $2 WHERE id = $1",
            UUID(e["id"]), f"unverified (pixel only): {result.reason}",
        )  # fmt: skip
    return 1


async def _evidence(conn: asyncpg.Connection, e: dict[str, Any], merchant: UUID) -> Evidence:
    occurred_at = datetime.fromisoformat(e["occurred_at"])
    code_advocate = None
    if e["referral_code"]:
        row = await conn.fetchrow(
            "SELECT id, program_id, external_id, email_hash FROM advocates"
            " WHERE merchant_id = $1 AND referral_code = $2",
            merchant,
            normalize_referral_code(e["referral_code"]),
        )
        if row:
            code_advocate = Advocate(
                row["id"], row["program_id"], row["external_id"], row["email_hash"]
            )
    click = None
    visitor = None
    if e["click_id"]:
        row = await conn.fetchrow(
            f"SELECT {_CLICK_COLUMNS} FROM clicks c JOIN advocates a ON a.id = c.advocate_id"
            " WHERE c.merchant_id = $1 AND c.click_id = $2 AND c.clicked_at = $3",
            merchant,
            UUID(e["click_id"]),
            click_time(e["click_id"]),
        )
        if row:
            click, visitor = _click(row), row["visitor_id"]
    if visitor is None and e.get("visitor_id"):
        visitor = UUID(e["visitor_id"])
    if visitor is None and e["order_id"] and e["type"] != "refund":
        visitor = await conn.fetchval(
            "SELECT visitor_id FROM order_pixels WHERE merchant_id = $1 AND order_id = $2",
            merchant,
            e["order_id"],
        )
    browser: tuple[Click, ...] = ()
    if visitor is not None:
        rows = await conn.fetch(
            f"SELECT {_CLICK_COLUMNS} FROM clicks c JOIN advocates a ON a.id = c.advocate_id"
            " WHERE c.merchant_id = $1 AND c.visitor_id = $2 AND c.clicked_at >= $3"
            " ORDER BY c.clicked_at",
            merchant,
            visitor,
            occurred_at - _LOOKBACK,
        )
        browser = tuple(_click(r) for r in rows)
    customer = Customer(
        e["customer_id"],
        bytes.fromhex(e["customer_email_hash"]) if e["customer_email_hash"] else None,
    )
    return Evidence(occurred_at, customer, code_advocate, click, browser)


async def _program_terms(
    conn: asyncpg.Connection, evidence: Evidence
) -> tuple[dict[UUID, tuple[int, ProgramRules]], dict[UUID, ProgramTerms]]:
    """The current rules of every program the evidence points at, and their attribution terms."""
    programs = {c.advocate.program_id for c in (evidence.click, *evidence.browser_clicks) if c}
    if evidence.code_advocate:
        programs.add(evidence.code_advocate.program_id)
    rules = await current_rules(conn, list(programs))
    terms = {
        p: ProgramTerms(r.attribution_window_days, r.attribution_model)
        for p, (_, r) in rules.items()
    }
    return rules, terms


async def _attribute_and_reward(conn: asyncpg.Connection, e: dict[str, Any]) -> None:
    merchant = UUID(e["merchant_id"])
    evidence = await _evidence(conn, e, merchant)
    rules, terms = await _program_terms(conn, evidence)
    result = attribute(evidence, terms)
    if not isinstance(result, Attributed):
        await conn.execute(
            "UPDATE conversions SET reason = $2 WHERE id = $1", UUID(e["id"]), result.reason
        )
        return

    advocate = result.advocate
    version, program_rules = rules[advocate.program_id]
    prior = await conn.fetchval(
        "SELECT count(DISTINCT c.id) FROM conversions c JOIN rewards r ON r.conversion_id = c.id"
        " WHERE c.merchant_id = $1 AND c.program_id = $2 AND c.type = 'purchase' AND c.id <> $3"
        " AND (c.customer_id = $4 OR c.customer_email_hash = $5)",
        merchant, advocate.program_id, UUID(e["id"]), e["customer_id"],
        bytes.fromhex(e["customer_email_hash"]) if e["customer_email_hash"] else None,
    )  # fmt: skip
    referrals = await conn.fetchval(
        "SELECT count(*) FROM rewards WHERE merchant_id = $1 AND advocate_id = $2"
        " AND beneficiary = 'advocate'",
        merchant,
        advocate.id,
    )
    sale = Sale(
        type=e["type"],
        amount_minor=e["amount_minor"] or 0,
        currency=e["currency"],
        occurred_at=evidence.occurred_at,
        prior_rewarded_purchases=prior,
        advocate_successful_referrals=referrals,
    )
    drafts = compute_rewards(program_rules, sale)
    how = {"referral_code": "referral code", "click_id": "click id", "cookie": "cookie"}
    reason = f"attributed by {how[result.method]}"
    if isinstance(drafts, NoReward):
        reason += f"; no reward: {drafts.reason}"
    else:
        for draft in drafts:
            await rewards_repo.create_reward(
                conn,
                merchant_id=merchant,
                program_id=advocate.program_id,
                advocate_id=advocate.id,
                conversion_id=UUID(e["id"]),
                customer_id=e["customer_id"],
                rules_version=version,
                draft=draft,
                reason=f"{e['type']} {e['order_id'] or e['event_id']}",
            )
    await conn.execute(
        "UPDATE conversions SET state = 'attributed', program_id = $2, advocate_id = $3,"
        " attributed_click_id = $4, attribution_method = $5, reason = $6, rules_version = $7"
        " WHERE id = $1",
        UUID(e["id"]), advocate.program_id, advocate.id,
        result.click.click_id if result.click else None, result.method, reason, version,
    )  # fmt: skip


async def _apply_refund(conn: asyncpg.Connection, e: dict[str, Any]) -> None:
    merchant, refund_id = UUID(e["merchant_id"]), UUID(e["id"])
    original = await conn.fetchrow(
        "SELECT id, amount_minor, currency, program_id, advocate_id FROM conversions"
        " WHERE merchant_id = $1 AND order_id = $2 AND type = 'purchase'"
        " ORDER BY received_at LIMIT 1 FOR UPDATE",
        merchant,
        e["refund_of"],
    )
    if original is None:
        await conn.execute(
            "UPDATE conversions SET state = 'refund_unmatched', reason = $2 WHERE id = $1",
            refund_id,
            f"no purchase with order_id {e['refund_of']!r} has been received",
        )
        return
    if e["currency"] and e["currency"] != original["currency"]:
        await conn.execute(
            "UPDATE conversions SET state = 'refund_unmatched', reason = $2 WHERE id = $1",
            refund_id,
            f"refund currency {e['currency']} is not the order currency {original['currency']}",
        )
        return
    earlier = await conn.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM conversions WHERE merchant_id = $1"
        " AND refund_of = $2 AND type = 'refund' AND state = 'refunded' AND id <> $3",
        merchant,
        e["refund_of"],
        refund_id,
    )
    order = original["amount_minor"]
    amount = e["amount_minor"] if e["amount_minor"] is not None else max(order - earlier, 0)
    refunded_total = earlier + amount
    rewards = await rewards_repo.rewards_of_conversion(conn, merchant, original["id"])
    reversed_now = 0
    for reward in rewards:
        already = reward["balances"]["reversed"]
        due = reversal_amount(reward["amount_minor"], already, order, refunded_total)
        if due:
            await rewards_repo.reverse(
                conn, reward["id"], merchant, due, reward["balances"],
                f"refund of {amount} of order {e['refund_of']}", refund_id,
            )  # fmt: skip
            reversed_now += due
    await conn.execute(
        "UPDATE conversions SET state = 'refunded', amount_minor = $2, currency = $3,"
        " program_id = $4, advocate_id = $5, reason = $6 WHERE id = $1",
        refund_id, amount, original["currency"], original["program_id"], original["advocate_id"],
        f"refund of {amount} of {order} on order {e['refund_of']}: "
        f"{reversed_now} of rewards reversed",
    )  # fmt: skip


async def get_conversion(
    pool: asyncpg.Pool, merchant_id: UUID, conversion_id: UUID
) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT id, event_id, state, type, order_id, amount_minor, currency, advocate_id,"
        " program_id, attribution_method, attributed_click_id, reason, rules_version"
        " FROM conversions WHERE merchant_id = $1 AND id = $2",
        merchant_id,
        conversion_id,
    )
    if row is None:
        return None
    rewards = await rewards_repo.rewards_of_conversion(pool, merchant_id, conversion_id)
    return {**dict(row), "rewards": rewards}
