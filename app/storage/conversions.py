"""Conversions and the order pixel's claims in PostgreSQL: plain SQL for the processing use case
(app/services/processing.py) and for reading a conversion. No rule is decided here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, cast
from uuid import UUID

import asyncpg

from app.attribution.conversions import ConversionState
from app.attribution.fraud import Decision
from app.attribution.pixels import PixelClaim
from app.pipeline.events import ConversionEvent, PixelEvent
from app.storage import fraud as fraud_repo
from app.storage import rewards as rewards_repo
from app.storage.rows import ConversionRow


async def lock(conn: asyncpg.Connection, *keys: str) -> None:
    """Transaction-scoped advisory locks, taken in sorted order, in one round trip. (A volatile
    function in the select list is evaluated after the sort: PostgreSQL >= 9.6.)"""
    ordered = sorted(set(keys))
    if len(ordered) == 1:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", ordered[0])
        return
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(k, 0))"
        " FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
        ordered,
    )


async def insert(conn: asyncpg.Connection, e: ConversionEvent) -> bool:
    """Store the conversion once (its id is derived from the event id); False if stored."""
    inserted = await conn.fetchval(
        """
        INSERT INTO conversions (id, merchant_id, event_id, type, order_id, refund_of,
            customer_id, customer_email_hash, amount_minor, currency, click_id, referral_code,
            ip_hash, ip_prefix, user_agent, occurred_at, received_at, state,
            requested_amount_minor, subscription_id, customer_email_canonical,
            customer_email_near, customer_email_disposable)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                $19, $20, $21, $22, $23)
        ON CONFLICT DO NOTHING RETURNING id
        """,
        e.id, e.merchant_id, e.event_id, e.type, e.order_id, e.refund_of, e.customer_id,
        e.customer_email_hash, e.amount_minor or 0, e.currency, e.click_id, e.referral_code,
        e.ip_hash, e.ip_prefix, e.user_agent, e.occurred_at, e.received_at,
        ConversionState.UNATTRIBUTED.value, e.amount_minor if e.type == "refund" else None,
        e.subscription_id, e.customer_email_canonical, list(e.customer_email_near),
        e.customer_email_disposable,
    )  # fmt: skip
    return inserted is not None


async def stored_ids(conn: asyncpg.Connection, ids: list[UUID]) -> set[UUID]:
    """Those of the conversions that are stored already."""
    rows = await conn.fetch("SELECT id FROM conversions WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


class DecidedRow(NamedTuple):
    """A signup or purchase with its outcome, for `insert_decided`: attributed (an advocate,
    their program's rules, the fraud decision, how), or not (only the reason)."""

    event: ConversionEvent
    program: UUID | None
    advocate: UUID | None  # None: unattributed
    rules_version: int | None
    reason: str
    decision: Decision | None
    method: str | None
    click: UUID | None  # the attributed click
    # The converting browser as the rules saw it: visitor, IP hash and prefix, user agent.
    device: tuple[UUID | None, bytes | None, str | None, str | None]


async def insert_decided(conn: asyncpg.Connection, rows: list[DecidedRow]) -> int:
    """Store signups and purchases, each with its outcome (attributed: program, advocate, rules
    version, reason, fraud decision, how it was attributed, the converting browser; or
    unattributed, with its reason), in one statement; returns how many were new. The row is the
    one `insert` then `set_attributed` (or `set_reason`) leave."""
    columns: list[list[object]] = [[] for _ in range(30)]
    for e, program, advocate, version, reason, decision, method, click, device in rows:
        visitor, ip_hash, ip_prefix, user_agent = device
        values = (
            e.id, e.merchant_id, e.event_id, e.type, e.order_id, e.refund_of, e.customer_id,
            e.customer_email_hash, e.amount_minor or 0, e.currency,
            UUID(e.click_id) if e.click_id else None, e.referral_code, ip_hash, ip_prefix,
            user_agent, e.occurred_at, e.received_at, e.subscription_id,
            e.customer_email_canonical,
            # bytea[] per row does not unnest: hex, comma-separated, taken apart in SQL
            ",".join(near.hex() for near in e.customer_email_near),
            e.customer_email_disposable, program, advocate, version, reason,
            decision.outcome if decision else None,
            fraud_repo.findings_json(decision) if decision else None, method, click, visitor,
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    inserted = await conn.fetch(
        """
        INSERT INTO conversions (id, merchant_id, event_id, type, order_id, refund_of,
            customer_id, customer_email_hash, amount_minor, currency, click_id, referral_code,
            ip_hash, ip_prefix, user_agent, occurred_at, received_at, subscription_id,
            customer_email_canonical, customer_email_near, customer_email_disposable,
            program_id, advocate_id, rules_version, reason, fraud_action, fraud_findings,
            attribution_method, attributed_click_id, visitor_id, state)
        SELECT id, merchant_id, event_id, type, order_id, refund_of, customer_id, email_hash,
            amount_minor, currency, click_id, referral_code, ip_hash, ip_prefix, user_agent,
            occurred_at, received_at, subscription_id, email_canonical,
            ARRAY(SELECT decode(x, 'hex') FROM unnest(string_to_array(email_near, ',')) AS x),
            email_disposable, program_id, advocate_id, rules_version, reason,
            coalesce(fraud_action, 'none'), coalesce(fraud_findings::jsonb, '[]'), method,
            attributed_click, visitor, CASE WHEN advocate_id IS NULL THEN $32 ELSE $31 END
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::bytea[], $9::bigint[], $10::text[], $11::uuid[], $12::text[],
            $13::bytea[], $14::text[], $15::text[], $16::timestamptz[], $17::timestamptz[],
            $18::text[], $19::bytea[], $20::text[], $21::boolean[], $22::uuid[], $23::uuid[],
            $24::int[], $25::text[], $26::text[], $27::text[], $28::text[], $29::uuid[],
            $30::uuid[])
            AS t(id, merchant_id, event_id, type, order_id, refund_of, customer_id, email_hash,
                 amount_minor, currency, click_id, referral_code, ip_hash, ip_prefix,
                 user_agent, occurred_at, received_at, subscription_id, email_canonical,
                 email_near, email_disposable, program_id, advocate_id, rules_version, reason,
                 fraud_action, fraud_findings, method, attributed_click, visitor)
        ON CONFLICT DO NOTHING RETURNING id
        """,
        *columns, ConversionState.ATTRIBUTED.value, ConversionState.UNATTRIBUTED.value,
    )  # fmt: skip
    return len(inserted)


async def set_reason(conn: asyncpg.Connection, conversion: UUID, reason: str) -> None:
    await conn.execute("UPDATE conversions SET reason = $2 WHERE id = $1", conversion, reason)


async def set_attributed(
    conn: asyncpg.Connection, conversion: UUID, *, program: UUID, advocate: UUID,
    click: UUID | None, method: str, reason: str, rules_version: int, decision: Decision,
    device: tuple[UUID | None, bytes | None, str | None, str | None],
    variant: tuple[UUID, str] | None,
) -> None:  # fmt: skip
    """The attributed conversion's outcome in one write: its advocate and reason, the fraud
    rules' decision, the converting browser as the rules saw it (visitor, IP hash and prefix,
    user agent: the postback's, or else the attributed click's, which later conversions' rules
    compare with), and the experiment's variant, if any."""
    visitor, ip_hash, ip_prefix, user_agent = device
    experiment, key = variant if variant is not None else (None, None)
    await conn.execute(
        "UPDATE conversions SET state = $8, program_id = $2, advocate_id = $3,"
        " attributed_click_id = $4, attribution_method = $5, reason = $6, rules_version = $7,"
        " fraud_action = $9, fraud_findings = $10::jsonb, visitor_id = coalesce(visitor_id, $11),"
        " ip_hash = coalesce(ip_hash, $12), ip_prefix = coalesce(ip_prefix, $13),"
        " user_agent = coalesce(user_agent, $14), experiment_id = coalesce($15, experiment_id),"
        " variant = coalesce($16, variant)"
        " WHERE id = $1",
        conversion, program, advocate, click, method, reason, rules_version,
        ConversionState.ATTRIBUTED.value, decision.outcome, fraud_repo.findings_json(decision),
        visitor, ip_hash, ip_prefix, user_agent, experiment, key,
    )  # fmt: skip


# -- The order pixel ---------------------------------------------------------------------------


async def insert_pixel_claim(conn: asyncpg.Connection, p: PixelEvent) -> bool:
    stored = await conn.fetchval(
        "INSERT INTO order_pixels (merchant_id, order_id, visitor_id, amount_minor, currency,"
        " seen_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING order_id",
        p.merchant_id, p.order_id, p.visitor_id, p.amount_minor, p.currency, p.received_at,
    )  # fmt: skip
    return stored is not None


async def pixel_claims(conn: asyncpg.Connection, merchant: UUID, order_id: str) -> list[PixelClaim]:
    rows = await conn.fetch(
        "SELECT visitor_id, seen_at FROM order_pixels WHERE merchant_id = $1 AND order_id = $2"
        " ORDER BY seen_at",
        merchant,
        order_id,
    )
    return [PixelClaim(r["visitor_id"], r["seen_at"]) for r in rows]


async def claimed_orders(
    conn: asyncpg.Connection, orders: list[tuple[UUID, str]]
) -> set[tuple[UUID, str]]:
    """Those of the (merchant, order id) pairs a browser claimed with the order pixel."""
    rows = await conn.fetch(
        "SELECT DISTINCT p.merchant_id, p.order_id FROM order_pixels p"
        " JOIN unnest($1::uuid[], $2::text[]) AS t(merchant_id, order_id)"
        " ON p.merchant_id = t.merchant_id AND p.order_id = t.order_id",
        [m for m, _ in orders], [o for _, o in orders],
    )  # fmt: skip
    return {(r["merchant_id"], r["order_id"]) for r in rows}


async def has_signed_order(conn: asyncpg.Connection, merchant: UUID, order_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM conversions WHERE merchant_id = $1 AND order_id = $2 AND verified",
            merchant,
            order_id,
        )
    )


async def insert_unverified(conn: asyncpg.Connection, p: PixelEvent, event_id: str) -> None:
    """The order as the pixel alone knows it (once per order)."""
    await conn.execute(
        """
        INSERT INTO conversions (id, merchant_id, event_id, type, order_id, amount_minor, currency,
            visitor_id, occurred_at, received_at, state, verified)
        VALUES ($1, $2, $3, 'purchase', $4, $5, $6, $7, $8, $8, $9, false)
        ON CONFLICT DO NOTHING
        """,
        p.id, p.merchant_id, event_id, p.order_id, p.amount_minor or 0, p.currency, p.visitor_id,
        p.received_at, ConversionState.UNATTRIBUTED.value,
    )  # fmt: skip


async def set_unverified_outcome(
    conn: asyncpg.Connection, merchant: UUID, order_id: str, *, reason: str,
    program: UUID | None = None, advocate: UUID | None = None, click: UUID | None = None,
) -> None:  # fmt: skip
    """Attributed by cookie (with an advocate), or unattributed (without)."""
    attributed = advocate is not None
    state = ConversionState.ATTRIBUTED if attributed else ConversionState.UNATTRIBUTED
    await conn.execute(
        "UPDATE conversions SET state = $3, program_id = $4, advocate_id = $5,"
        " attributed_click_id = $6, attribution_method = $7, reason = $8"
        " WHERE merchant_id = $1 AND order_id = $2 AND NOT verified",
        merchant, order_id, state.value, program, advocate, click,
        "cookie" if attributed else None, reason,
    )  # fmt: skip


# -- Refunds -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedPurchase:
    id: UUID
    amount_minor: int
    currency: str
    program_id: UUID | None
    advocate_id: UUID | None


@dataclass(frozen=True, slots=True)
class WaitingRefund:
    id: UUID
    requested_minor: int | None
    currency: str | None


async def signed_purchase(
    conn: asyncpg.Connection, merchant: UUID, order_id: str
) -> SignedPurchase | None:
    row = await conn.fetchrow(
        "SELECT id, amount_minor, currency, program_id, advocate_id FROM conversions"
        " WHERE merchant_id = $1 AND order_id = $2 AND type IN ('purchase', 'renewal')"
        " AND verified ORDER BY received_at LIMIT 1",
        merchant,
        order_id,
    )
    if row is None:
        return None
    return SignedPurchase(
        row["id"], row["amount_minor"], row["currency"].strip(), row["program_id"],
        row["advocate_id"],
    )  # fmt: skip


async def refunded_total(
    conn: asyncpg.Connection, merchant: UUID, order_id: str, excluding: UUID | None = None
) -> int:
    """The refunds applied to the order so far (but `excluding`)."""
    total: int = await conn.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM conversions WHERE merchant_id = $1"
        " AND refund_of = $2 AND type = 'refund' AND state = $3"
        " AND ($4::uuid IS NULL OR id <> $4)",
        merchant, order_id, ConversionState.REFUNDED.value, excluding,
    )  # fmt: skip
    return int(total)


async def settle_orders(
    conn: asyncpg.Connection, orders: list[tuple[UUID, str, bool]], superseded_reason: str
) -> list[tuple[UUID, str, WaitingRefund]]:
    """`settle_order` for many orders (merchant, order id, whether refunds wait for it) in one
    statement: the refunds that waited, by order, each order's oldest first. (The pixel's
    unverified rows are superseded whether or not refunds wait.)"""
    rows = await conn.fetch(
        "WITH o AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::boolean[])"
        "  AS t(merchant_id, order_id, refunds_wait)),"
        " superseded AS (UPDATE conversions c SET state = $5, reason = $4 FROM o"
        "  WHERE c.merchant_id = o.merchant_id AND c.order_id = o.order_id AND NOT c.verified"
        "  AND c.state <> $5)"
        " SELECT c.merchant_id, c.refund_of, c.id, c.requested_amount_minor, c.currency"
        " FROM conversions c JOIN (SELECT DISTINCT merchant_id, order_id FROM o"
        "  WHERE refunds_wait) w ON c.merchant_id = w.merchant_id AND c.refund_of = w.order_id"
        " WHERE c.type = 'refund' AND c.state = $6"
        " ORDER BY c.merchant_id, c.refund_of, c.received_at, c.id",
        [m for m, _, _ in orders], [o for _, o, _ in orders], [w for _, _, w in orders],
        superseded_reason, ConversionState.SUPERSEDED.value,
        ConversionState.REFUND_UNMATCHED.value,
    )  # fmt: skip
    waiting = []
    for r in rows:
        currency = r["currency"].strip() if r["currency"] else None
        refund = WaitingRefund(r["id"], r["requested_amount_minor"], currency)
        waiting.append((r["merchant_id"], r["refund_of"], refund))
    return waiting


async def settle_order(
    conn: asyncpg.Connection, merchant: UUID, order_id: str, superseded_reason: str,
    refunds_wait: bool,
) -> list[WaitingRefund]:  # fmt: skip
    """Now that the order has a signed conversion: the pixel's unverified one is superseded;
    and, if `refunds_wait` (a purchase or renewal), the refunds that waited for it, oldest first
    (one round trip)."""
    settled = await settle_orders(conn, [(merchant, order_id, refunds_wait)], superseded_reason)
    return [refund for _, _, refund in settled]


async def set_refund_outcome(
    conn: asyncpg.Connection, refund: UUID, state: ConversionState, reason: str,
    purchase: SignedPurchase | None = None, amount_minor: int | None = None,
) -> None:  # fmt: skip
    """The refund's state and reason; with its purchase: the amount applied, the order's
    currency, program and advocate."""
    if purchase is None:
        await conn.execute(
            "UPDATE conversions SET state = $2, reason = $3 WHERE id = $1",
            refund, state.value, reason,
        )  # fmt: skip
        return
    await conn.execute(
        "UPDATE conversions SET state = $2, reason = $3, amount_minor = $4, currency = $5,"
        " program_id = $6, advocate_id = $7 WHERE id = $1",
        refund, state.value, reason, amount_minor or 0, purchase.currency, purchase.program_id,
        purchase.advocate_id,
    )  # fmt: skip


# -- Subscriptions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirstPurchase:
    id: UUID
    occurred_at: datetime
    program_id: UUID | None
    advocate_id: UUID | None


async def first_purchase_of(
    conn: asyncpg.Connection, merchant: UUID, subscription: str
) -> FirstPurchase | None:
    row = await conn.fetchrow(
        "SELECT id, occurred_at, program_id, advocate_id FROM conversions WHERE merchant_id = $1"
        " AND subscription_id = $2 AND type = 'purchase' AND verified"
        " ORDER BY occurred_at, received_at LIMIT 1",
        merchant,
        subscription,
    )
    return FirstPurchase(**dict(row)) if row else None


async def rewarded_renewals(
    conn: asyncpg.Connection, merchant: UUID, subscription: str, renewal: UUID
) -> int:
    """The subscription's other renewals that earned a reward."""
    count: int = await conn.fetchval(
        "SELECT count(DISTINCT c.id) FROM conversions c JOIN rewards r ON r.conversion_id = c.id"
        " WHERE c.merchant_id = $1 AND c.subscription_id = $2 AND c.type = 'renewal'"
        " AND c.id <> $3",
        merchant, subscription, renewal,
    )  # fmt: skip
    return int(count)


# -- Counts the reward rules need --------------------------------------------------------------


async def reward_counts(
    conn: asyncpg.Connection, merchant: UUID, program: UUID, advocate: UUID, conversion: UUID,
    customer_id: str | None, email_hash: bytes | None,
) -> tuple[int, int]:  # fmt: skip
    """The customer's other purchases rewarded in the program (matched by customer id or e-mail
    hash), and the advocate's rewarded referrals so far: one round trip."""
    [counts] = await reward_counts_of(
        conn, [(merchant, program, advocate, conversion, customer_id, email_hash)]
    )
    return counts


async def reward_counts_of(
    conn: asyncpg.Connection,
    conversions: list[tuple[UUID, UUID, UUID, UUID, str | None, bytes | None]],
) -> list[tuple[int, int]]:
    """`reward_counts` of each (merchant, program, advocate, conversion, customer id, e-mail
    hash), in order, in one query."""
    # One branch per way of matching the customer, each on its own index (an OR of the two
    # would read every conversion of the program); UNION counts a conversion matched both ways
    # once.
    rows = await conn.fetch(
        "SELECT (SELECT count(*) FROM ("
        "  SELECT c.id FROM conversions c WHERE c.merchant_id = t.m AND c.program_id = t.p"
        "   AND c.customer_id = t.customer AND c.type = 'purchase' AND c.id <> t.conversion"
        "   AND EXISTS (SELECT 1 FROM rewards r WHERE r.conversion_id = c.id)"
        "  UNION"
        "  SELECT c.id FROM conversions c WHERE c.merchant_id = t.m AND c.program_id = t.p"
        "   AND c.customer_email_hash = t.email AND c.type = 'purchase'"
        "   AND c.id <> t.conversion"
        "   AND EXISTS (SELECT 1 FROM rewards r WHERE r.conversion_id = c.id)"
        " ) AS matched) AS purchases,"
        " (SELECT count(*) FROM rewards WHERE merchant_id = t.m AND advocate_id = t.a"
        "  AND beneficiary = 'advocate') AS referrals"
        " FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bytea[])"
        "  WITH ORDINALITY AS t(m, p, a, conversion, customer, email, n)"
        " ORDER BY t.n",
        *(list(column) for column in zip(*conversions, strict=True)),
    )  # fmt: skip
    return [(int(r["purchases"]), int(r["referrals"])) for r in rows]


# -- Reading -----------------------------------------------------------------------------------


async def get_conversion(
    db: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, conversion_id: UUID
) -> ConversionRow | None:
    row = await db.fetchrow(
        "SELECT id, event_id, state, type, order_id, amount_minor, currency, advocate_id,"
        " program_id, attribution_method, attributed_click_id, reason, rules_version"
        " FROM conversions WHERE merchant_id = $1 AND id = $2",
        merchant_id,
        conversion_id,
    )
    if row is None:
        return None
    rewards = await rewards_repo.rewards_of_conversion(db, merchant_id, conversion_id)
    decision = await fraud_repo.fraud_of(db, conversion_id)
    return cast(ConversionRow, {**dict(row), "fraud": decision, "rewards": rewards})
