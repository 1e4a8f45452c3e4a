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
    NotAttributed,
    ProgramTerms,
    attribute,
)
from app.attribution.pixels import PixelClaim, pixel_evidence
from app.attribution.refunds import reversal_amount, settle_refund
from app.attribution.rewards import NoReward, Sale, compute_rewards
from app.attribution.rules import ProgramRules
from app.codes import normalize_referral_code
from app.events import click_time
from app.storage import dead_letters, redis_keys
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
        self._processed: list[str] = []

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

    def before_ack(self, pipe: Any) -> None:
        """Processed conversions are in PostgreSQL now: drop their "queued" marks (one DEL per
        key: on a cluster, keys of several slots cannot share one command)."""
        for conversion_id in self._processed:
            pipe.delete(redis_keys.conversion_queued(conversion_id))
        self._processed = []

    async def store(self, conn: asyncpg.Connection, batch: Batch) -> int:
        events: list[dict[str, Any]] = batch.events
        self._processed = [e["id"] for e in events if e.get("type") != "pixel"]
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


async def _lock(conn: asyncpg.Connection, *keys: str) -> None:
    """Transaction-scoped advisory locks. Conversions of one order, and rewards counted per
    customer or per advocate, are decided one at a time however many flushers run: without,
    two first purchases of one customer processed at once would both be "first", and a refund
    processed beside its purchase would find no purchase while the purchase found no refund.
    Keys are taken sorted, and an order's key always first (by the caller), so two transactions
    never wait on each other in a circle."""
    for key in sorted(set(keys)):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


def _order_key(merchant: UUID, order_id: str) -> str:
    return f"order:{merchant}:{order_id}"


async def process_conversion(conn: asyncpg.Connection, e: dict[str, Any]) -> int:
    """Store, attribute and reward one conversion; 0 when it was already stored."""
    if e["type"] == "pixel":
        return await _record_pixel(conn, e)
    merchant = UUID(e["merchant_id"])
    order_id = e["refund_of"] if e["type"] == "refund" else e["order_id"]
    if order_id:
        await _lock(conn, _order_key(merchant, order_id))
    inserted = await conn.fetchval(
        """
        INSERT INTO conversions (id, merchant_id, event_id, type, order_id, refund_of,
            customer_id, customer_email_hash, amount_minor, currency, click_id, referral_code,
            ip_hash, ip_prefix, user_agent, occurred_at, received_at, state,
            requested_amount_minor)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                'unattributed', $18)
        ON CONFLICT DO NOTHING RETURNING id
        """,
        UUID(e["id"]), merchant, e["event_id"], e["type"], e["order_id"],
        e["refund_of"], e["customer_id"],
        bytes.fromhex(e["customer_email_hash"]) if e["customer_email_hash"] else None,
        e["amount_minor"] or 0, e["currency"], e["click_id"], e["referral_code"],
        bytes.fromhex(e["ip_hash"]) if e["ip_hash"] else None, e["ip_prefix"], e["user_agent"],
        datetime.fromisoformat(e["occurred_at"]), datetime.fromisoformat(e["received_at"]),
        e["amount_minor"] if e["type"] == "refund" else None,
    )  # fmt: skip
    if inserted is None:
        return 0
    if e["type"] == "refund":
        await _apply_refund(
            conn, merchant, UUID(e["id"]), e["refund_of"], e["amount_minor"], e["currency"]
        )
        return 1
    await _attribute_and_reward(conn, e)
    if e["order_id"]:
        await conn.execute(
            "UPDATE conversions SET state = 'superseded',"
            " reason = 'a signed postback for this order arrived' WHERE merchant_id = $1"
            " AND order_id = $2 AND NOT verified AND state <> 'superseded'",
            merchant,
            e["order_id"],
        )
        if e["type"] == "purchase":
            await _apply_waiting_refunds(conn, merchant, e["order_id"])
    return 1


async def _pixel_claims(
    conn: asyncpg.Connection, merchant: UUID, order_id: str
) -> list[PixelClaim]:
    rows = await conn.fetch(
        "SELECT visitor_id, seen_at FROM order_pixels WHERE merchant_id = $1 AND order_id = $2"
        " ORDER BY seen_at",
        merchant,
        order_id,
    )
    return [PixelClaim(r["visitor_id"], r["seen_at"]) for r in rows]


async def _record_pixel(conn: asyncpg.Connection, e: dict[str, Any]) -> int:
    """Keep the browser's claim on this order; without a signed postback yet, show the order as
    an unverified conversion: attributed by cookie for the statistics (apart from purchases and
    revenue), never rewarded, and only while exactly one browser claims it."""
    merchant, order_id = UUID(e["merchant_id"]), e["order_id"]
    await _lock(conn, _order_key(merchant, order_id))
    seen_at = datetime.fromisoformat(e["received_at"])
    stored = await conn.fetchval(
        "INSERT INTO order_pixels (merchant_id, order_id, visitor_id, amount_minor, currency,"
        " seen_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING order_id",
        merchant, order_id, UUID(e["visitor_id"]), e["amount_minor"], e["currency"], seen_at,
    )  # fmt: skip
    if stored is None:
        return 0
    postback = await conn.fetchval(
        "SELECT 1 FROM conversions WHERE merchant_id = $1 AND order_id = $2 AND verified",
        merchant,
        order_id,
    )
    if postback:
        return 1  # the postback was decided on its own evidence; the claim stays on record
    await conn.execute(
        """
        INSERT INTO conversions (id, merchant_id, event_id, type, order_id, amount_minor, currency,
            visitor_id, occurred_at, received_at, state, verified)
        VALUES ($1, $2, $3, 'purchase', $4, $5, $6, $7, $8, $8, 'unattributed', false)
        ON CONFLICT DO NOTHING
        """,
        UUID(e["id"]), merchant, f"pixel:{order_id}", order_id, e["amount_minor"] or 0,
        e["currency"], UUID(e["visitor_id"]), seen_at,
    )  # fmt: skip
    claims = await _pixel_claims(conn, merchant, order_id)
    first = claims[0]
    verdict = pixel_evidence(claims, first.seen_at)
    result: Attributed | NotAttributed = NotAttributed(verdict.reason)
    if verdict.visitor_id is not None:
        evidence = await _evidence(
            conn, merchant, first.seen_at, Customer(None, None), None, None, verdict.visitor_id
        )
        _, terms = await _program_terms(conn, evidence)
        result = attribute(evidence, terms)
    if isinstance(result, Attributed):
        await conn.execute(
            "UPDATE conversions SET state = 'attributed', program_id = $1, advocate_id = $2,"
            " attributed_click_id = $3, attribution_method = 'cookie', reason = $4"
            " WHERE merchant_id = $5 AND order_id = $6 AND NOT verified",
            result.advocate.program_id, result.advocate.id,
            result.click.click_id if result.click else None,
            "unverified (pixel only): attributed by cookie, no reward until a signed postback",
            merchant, order_id,
        )  # fmt: skip
    else:
        await conn.execute(
            "UPDATE conversions SET state = 'unattributed', program_id = NULL,"
            " advocate_id = NULL, attributed_click_id = NULL, attribution_method = NULL,"
            " reason = $1 WHERE merchant_id = $2 AND order_id = $3 AND NOT verified",
            f"unverified (pixel only): {result.reason}", merchant, order_id,
        )  # fmt: skip
    return 1


async def _evidence(
    conn: asyncpg.Connection,
    merchant: UUID,
    occurred_at: datetime,
    customer: Customer,
    referral_code: str | None,
    click_id: str | None,
    visitor: UUID | None,
) -> Evidence:
    """What PostgreSQL knows that points at an advocate: the typed code's owner, the click the
    click id names, and every click of the browser (from the click, or the given visitor)."""
    code_advocate = None
    if referral_code:
        row = await conn.fetchrow(
            "SELECT id, program_id, external_id, email_hash FROM advocates"
            " WHERE merchant_id = $1 AND referral_code = $2",
            merchant,
            normalize_referral_code(referral_code),
        )
        if row:
            code_advocate = Advocate(
                row["id"], row["program_id"], row["external_id"], row["email_hash"]
            )
    click = None
    if click_id:
        row = await conn.fetchrow(
            f"SELECT {_CLICK_COLUMNS} FROM clicks c JOIN advocates a ON a.id = c.advocate_id"
            " WHERE c.merchant_id = $1 AND c.click_id = $2 AND c.clicked_at = $3",
            merchant,
            UUID(click_id),
            click_time(click_id),
        )
        if row:
            click, visitor = _click(row), row["visitor_id"]
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
    occurred_at = datetime.fromisoformat(e["occurred_at"])
    email_hash = bytes.fromhex(e["customer_email_hash"]) if e["customer_email_hash"] else None
    customer = Customer(e["customer_id"], email_hash)
    # The pixel's browser is evidence only when the postback brings none of its own.
    visitor, pixel_reason = None, ""
    if not e["click_id"] and not e["referral_code"] and e["order_id"]:
        claims = await _pixel_claims(conn, merchant, e["order_id"])
        if claims:
            verdict = pixel_evidence(claims, occurred_at)
            visitor, pixel_reason = verdict.visitor_id, verdict.reason
    evidence = await _evidence(
        conn, merchant, occurred_at, customer, e["referral_code"], e["click_id"], visitor
    )
    rules, terms = await _program_terms(conn, evidence)
    result = attribute(evidence, terms)
    if not isinstance(result, Attributed):
        await conn.execute(
            "UPDATE conversions SET reason = $2 WHERE id = $1",
            UUID(e["id"]),
            pixel_reason or result.reason,
        )
        return

    advocate = result.advocate
    version, program_rules = rules[advocate.program_id]
    # Counted per customer and per advocate: decided one conversion at a time.
    keys = [f"advocate:{advocate.id}"]
    if e["customer_id"]:
        keys.append(f"customer:{advocate.program_id}:{e['customer_id']}")
    if email_hash:
        keys.append(f"email:{advocate.program_id}:{email_hash.hex()}")
    await _lock(conn, *keys)
    prior = await conn.fetchval(
        "SELECT count(DISTINCT c.id) FROM conversions c JOIN rewards r ON r.conversion_id = c.id"
        " WHERE c.merchant_id = $1 AND c.program_id = $2 AND c.type = 'purchase' AND c.id <> $3"
        " AND (c.customer_id = $4 OR c.customer_email_hash = $5)",
        merchant, advocate.program_id, UUID(e["id"]), e["customer_id"], email_hash,
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
        customer_known=bool(e["customer_id"] or email_hash),
    )
    drafts = compute_rewards(program_rules, sale)
    how = {"referral_code": "referral code", "click_id": "click id", "cookie": "cookie"}
    reason = f"attributed by {how[result.method]}"
    if result.method == "cookie" and visitor is not None:
        reason = "attributed by cookie (the order pixel's browser)"
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


async def _apply_waiting_refunds(conn: asyncpg.Connection, merchant: UUID, order_id: str) -> None:
    """Refunds of this order that arrived before its purchase: applied now, oldest first."""
    waiting = await conn.fetch(
        "SELECT id, requested_amount_minor, currency FROM conversions WHERE merchant_id = $1"
        " AND refund_of = $2 AND type = 'refund' AND state = 'refund_unmatched'"
        " ORDER BY received_at, id",
        merchant,
        order_id,
    )
    for refund in waiting:
        await _apply_refund(
            conn, merchant, refund["id"], order_id, refund["requested_amount_minor"],
            refund["currency"].strip() if refund["currency"] else None,
        )  # fmt: skip


async def _apply_refund(
    conn: asyncpg.Connection,
    merchant: UUID,
    refund_id: UUID,
    refund_of: str,
    requested_minor: int | None,
    currency: str | None,
) -> None:
    """Match the refund to its verified purchase, cap it at what is left of the order, and
    reverse that share of the order's rewards. (The caller holds the order's lock.)"""
    original = await conn.fetchrow(
        "SELECT id, amount_minor, currency, program_id, advocate_id FROM conversions"
        " WHERE merchant_id = $1 AND order_id = $2 AND type = 'purchase' AND verified"
        " ORDER BY received_at LIMIT 1",
        merchant,
        refund_of,
    )
    if original is None:
        await conn.execute(
            "UPDATE conversions SET state = 'refund_unmatched', reason = $2 WHERE id = $1",
            refund_id,
            f"no signed purchase with order_id {refund_of!r} has been received yet: the refund"
            " is applied when it arrives",
        )
        return
    order_currency = original["currency"].strip()
    if currency and currency != order_currency:
        await conn.execute(
            "UPDATE conversions SET state = 'refund_unmatched', reason = $2 WHERE id = $1",
            refund_id,
            f"refund currency {currency} is not the order currency {order_currency}",
        )
        return
    earlier = await conn.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM conversions WHERE merchant_id = $1"
        " AND refund_of = $2 AND type = 'refund' AND state = 'refunded' AND id <> $3",
        merchant,
        refund_of,
        refund_id,
    )
    order = original["amount_minor"]
    settlement = settle_refund(order, earlier, requested_minor, refund_of)
    if settlement.applied_minor == 0:
        await conn.execute(
            "UPDATE conversions SET state = 'refund_refused', amount_minor = 0, currency = $2,"
            " program_id = $3, advocate_id = $4, reason = $5 WHERE id = $1",
            refund_id, order_currency, original["program_id"], original["advocate_id"],
            settlement.reason,
        )  # fmt: skip
        return
    refunded_total = earlier + settlement.applied_minor
    rewards = await rewards_repo.rewards_of_conversion(conn, merchant, original["id"], lock=True)
    reversed_now = 0
    for reward in rewards:
        already = reward["balances"]["reversed"]
        due = reversal_amount(reward["amount_minor"], already, order, refunded_total)
        if due:
            await rewards_repo.reverse(
                conn, reward["id"], merchant, due, reward["balances"],
                f"refund of {settlement.applied_minor} of order {refund_of}", refund_id,
            )  # fmt: skip
            reversed_now += due
    await conn.execute(
        "UPDATE conversions SET state = 'refunded', amount_minor = $2, currency = $3,"
        " program_id = $4, advocate_id = $5, reason = $6 WHERE id = $1",
        refund_id, settlement.applied_minor, order_currency, original["program_id"],
        original["advocate_id"], f"{settlement.reason}: {reversed_now} of rewards reversed",
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
