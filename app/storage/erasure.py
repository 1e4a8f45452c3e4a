"""Erasure in SQL: find a person's rows and overwrite their personal data in place, keeping every
amount, state and count (app/services/erasure.py decides what and in which order). Each
function returns how many rows it changed."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import orjson


async def customer_conversions(
    conn: asyncpg.Connection, merchant: UUID, customer_id: str | None, email_hash: bytes | None
) -> list[Any]:
    return await conn.fetch(
        "SELECT id, visitor_id, click_id, attributed_click_id FROM conversions"
        " WHERE merchant_id = $1 AND (customer_id = $2 OR customer_email_hash = $3) FOR UPDATE",
        merchant, customer_id, email_hash,
    )  # fmt: skip


async def click_visitors(
    conn: asyncpg.Connection, merchant: UUID, click_ids: list[UUID]
) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT DISTINCT visitor_id FROM clicks WHERE merchant_id = $1"
        " AND click_id = ANY($2::uuid[]) AND visitor_id IS NOT NULL",
        merchant,
        click_ids,
    )
    return [r["visitor_id"] for r in rows]


_MAP = "WITH m AS (SELECT unnest($3::uuid[]) AS real, unnest($4::uuid[]) AS pseudo)"


async def scrub_conversions(
    conn: asyncpg.Connection, ids: list[UUID], pseudonym: str, visitors: dict[UUID, UUID]
) -> int:
    rows = await conn.fetch(
        f"{_MAP} UPDATE conversions c SET"
        " customer_id = CASE WHEN c.customer_id IS NULL THEN NULL ELSE $2 END,"
        " customer_email_hash = NULL, customer_email_canonical = NULL, customer_email_near = '{}',"
        " visitor_id = (SELECT pseudo FROM m WHERE m.real = c.visitor_id),"
        " ip_hash = NULL, ip_prefix = NULL, user_agent = NULL"
        " WHERE c.id = ANY($1::uuid[]) RETURNING c.id",
        ids, pseudonym, list(visitors), list(visitors.values()),
    )  # fmt: skip
    return len(rows)


async def scrub_customer_rewards(
    conn: asyncpg.Connection, merchant: UUID, conversions: list[UUID], customer_id: str | None,
    pseudonym: str,
) -> int:  # fmt: skip
    rows = await conn.fetch(
        "UPDATE rewards SET customer_id = $4 WHERE merchant_id = $1 AND customer_id IS NOT NULL"
        " AND (conversion_id = ANY($2::uuid[]) OR customer_id = $3) RETURNING id",
        merchant, conversions, customer_id, pseudonym,
    )  # fmt: skip
    return len(rows)


async def scrub_clicks(
    conn: asyncpg.Connection, merchant: UUID, click_ids: list[UUID], visitors: dict[UUID, UUID]
) -> int:
    """The clicks the person made (by click id or browser): browser id mapped to its pseudonym
    (distinct counts stay), address data, user agent and referer dropped (is_bot was decided)."""
    rows = await conn.fetch(
        f"{_MAP} UPDATE clicks c SET visitor_id = (SELECT pseudo FROM m WHERE m.real ="
        "  c.visitor_id), ip_hash = NULL, ip_prefix = NULL, user_agent = NULL, referer = NULL"
        " WHERE c.merchant_id = $1 AND (c.click_id = ANY($2::uuid[])"
        "  OR c.visitor_id = ANY($3::uuid[])) RETURNING c.click_id",
        merchant, click_ids, list(visitors), list(visitors.values()),
    )  # fmt: skip
    return len(rows)


async def scrub_pixels(conn: asyncpg.Connection, merchant: UUID, visitors: dict[UUID, UUID]) -> int:
    rows = await conn.fetch(
        "WITH m AS (SELECT unnest($2::uuid[]) AS real, unnest($3::uuid[]) AS pseudo)"
        " UPDATE order_pixels p SET visitor_id = m.pseudo FROM m"
        " WHERE p.merchant_id = $1 AND p.visitor_id = m.real RETURNING p.order_id",
        merchant, list(visitors), list(visitors.values()),
    )  # fmt: skip
    return len(rows)


async def scrub_dead_letters(conn: asyncpg.Connection, replacements: list[tuple[str, str]]) -> int:
    """Dead letters are raw events (JSON bytes): each erased value replaced where it appears."""
    changed: set[int] = set()
    for old, new in replacements:
        rows = await conn.fetch(
            "UPDATE dead_letters SET payload = convert_to(replace(convert_from(payload, 'UTF8'),"
            " $1, $2), 'UTF8') WHERE position(convert_to($1, 'UTF8') IN payload) > 0 RETURNING id",
            old, new,
        )  # fmt: skip
        changed.update(r["id"] for r in rows)
    return len(changed)


async def scrub_audit(
    conn: asyncpg.Connection, merchant: UUID, values: list[str], object_id: str | None,
    marker: str,
) -> int:  # fmt: skip
    """Recorded request bodies holding one of the values (as a JSON string, exactly), or about
    the erased object: the body is replaced by a marker. The rest of each row stays."""
    await conn.execute("SET LOCAL referral.erasure = 'on'")
    rows = await conn.fetch(
        "UPDATE audit_log SET change = jsonb_build_object('erased', $4::text)"
        " WHERE merchant_id = $1 AND change IS NOT NULL AND NOT change ? 'erased' AND ("
        "  EXISTS (SELECT 1 FROM unnest($2::text[]) AS v"
        "   WHERE jsonb_path_exists(change, '$.** ? (@ == $v)', jsonb_build_object('v', v)))"
        "  OR ($3::text IS NOT NULL AND object_ids ? 'advocate_id'"
        "      AND object_ids ->> 'advocate_id' = $3))"
        " RETURNING id",
        merchant, values, object_id, marker,
    )  # fmt: skip
    return len(rows)


async def scrub_customer_events(
    conn: asyncpg.Connection, merchant: UUID, customer_id: str | None, conversions: list[UUID],
    pseudonym: str,
) -> int:  # fmt: skip
    """The event feed's copies (conversion and reward events) of the customer id."""
    rows = await conn.fetch(
        "UPDATE events SET data = jsonb_set(data, '{customer_id}', to_jsonb($4::text))"
        " WHERE merchant_id = $1 AND data ->> 'customer_id' IS NOT NULL"
        " AND (data ->> 'customer_id' = $2 OR data ->> 'conversion_id' = ANY($3::text[]))"
        " RETURNING seq",
        merchant, customer_id, [str(c) for c in conversions], pseudonym,
    )  # fmt: skip
    return len(rows)


async def scrub_advocate_events(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID, pseudonym: str, code: str
) -> int:
    rows = await conn.fetch(
        "UPDATE events SET data = data || jsonb_build_object('external_id', $3::text,"
        " 'name', '', 'referral_code', $4::text) WHERE merchant_id = $1"
        " AND type = 'advocate.enrolled' AND data ->> 'advocate_id' = $2"
        " AND data ->> 'external_id' <> $3 RETURNING seq",
        merchant, str(advocate), pseudonym, code,
    )  # fmt: skip
    return len(rows)


async def advocate_for_erasure(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT id, external_id, name, referral_code, payout_email, payout_name,"
        " payout_reference FROM advocates WHERE merchant_id = $1 AND id = $2 FOR UPDATE",
        merchant,
        advocate,
    )
    return dict(row) if row else None


async def scrub_advocate(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID, pseudonym: str, code: str
) -> int:
    rows = await conn.fetch(
        "UPDATE advocates SET external_id = $3, name = '', email_hash = NULL,"
        " email_canonical = NULL, email_near = '{}', payout_email = NULL, payout_name = NULL,"
        " payout_reference = NULL, referral_code = $4"
        " WHERE merchant_id = $1 AND id = $2 AND external_id <> $3 RETURNING id",
        merchant, advocate, pseudonym, code,
    )  # fmt: skip
    return len(rows)


async def deactivate_links(conn: asyncpg.Connection, merchant: UUID, advocate: UUID) -> list[str]:
    rows = await conn.fetch(
        "UPDATE links SET active = false WHERE merchant_id = $1 AND advocate_id = $2 AND active"
        " RETURNING code",
        merchant,
        advocate,
    )
    return [r["code"] for r in rows]


async def record(
    conn: asyncpg.Connection, merchant: UUID, kind: str, digest: bytes, pseudonym: str,
    changed: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """The erasure's record (the first one for a repeated request)."""
    row = await conn.fetchrow(
        "INSERT INTO erasures (merchant_id, kind, subject_digest, pseudonym, changed)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)"
        " ON CONFLICT (merchant_id, kind, subject_digest) DO UPDATE SET kind = EXCLUDED.kind"
        " RETURNING id, kind, pseudonym, requested_at",
        merchant, kind, digest, pseudonym, _json(changed),
    )  # fmt: skip
    assert row is not None
    return dict(row)


def _json(value: dict[str, int]) -> str:
    return orjson.dumps(value).decode()
