"""Reconciliation with the shop's orders: read the upload, compare it with our purchases of the
period (app/attribution/reconciliation.py), keep the report, and apply it once.

Applying takes, per order to take back, the order's lock (the one refund processing takes),
then its rewards' locks, and reverses through the ledger — with the report as the reason —
what the shop's view no longer supports: all of a cancelled order's rewards, the share of a
lower total. A clawback of money already paid is owed by the advocate (app/services/payouts.py).
Applying again changes nothing and answers the same.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app.attribution.payouts import parse_amount
from app.attribution.reconciliation import ShopOrder, compare, normalise_status, takes_back
from app.errors import InvalidInput
from app.services import rewards as rewards_service
from app.services.tenancy import found
from app.services.tx import transaction
from app.storage import conversions as conversions_repo
from app.storage import reconciliation as repo

MAX_ORDERS = 200_000


def parse_orders(content_type: str, body: bytes) -> list[ShopOrder]:
    """CSV (a header row: order_id, status, amount or amount_minor, currency, and optionally
    customer_id and click_id) or JSON lines with the same keys. InvalidInput names the line."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the upload is not UTF-8", field="body") from None
    if "json" in content_type:
        records: list[dict[str, Any]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise InvalidInput(f"line {n} is not JSON", field="body") from None
                if not isinstance(value, dict):
                    raise InvalidInput(f"line {n} is not a JSON object", field="body")
                records.append(value)
        first = 1
    else:
        # newline="": the csv module reads line ends itself (a lone CR inside a field is data).
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            columns = set(reader.fieldnames or ())
            missing = {"order_id", "status", "currency"} - columns
            if missing or not columns & {"amount", "amount_minor"}:
                raise InvalidInput("the CSV's header row must name order_id, status, currency "
                                   "and amount (or amount_minor)", field="body")  # fmt: skip
            records = list(reader)
        except csv.Error as exc:
            raise InvalidInput(f"line {reader.line_num}: not CSV ({exc})", field="body") from None
        first = 2  # after the header
    if len(records) > MAX_ORDERS:
        raise InvalidInput(f"at most {MAX_ORDERS} orders per report", field="body")
    orders, seen = [], set()
    for n, record in enumerate(records, first):
        order = _order(record, n)
        if order.order_id in seen:
            raise InvalidInput(f"line {n}: order {order.order_id!r} is listed twice", field="body")
        seen.add(order.order_id)
        orders.append(order)
    return orders


def _order(record: dict[str, Any], n: int) -> ShopOrder:
    def text(name: str, required: bool = True) -> str | None:
        value = record.get(name)
        value = None if value is None else str(value).strip()
        if required and not value:
            raise InvalidInput(f"line {n}: {name} is missing", field="body")
        if value and (len(value) > 200 or any(ord(c) < 32 for c in value)):
            raise InvalidInput(f"line {n}: {name} is not a plain value of 200 characters at "
                               "most", field="body")  # fmt: skip
        return value or None

    order_id, status, currency = text("order_id"), text("status"), text("currency")
    assert order_id is not None and status is not None and currency is not None
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise InvalidInput(f"line {n}: currency must be an ISO 4217 code", field="body")
    try:
        normalised = normalise_status(status)
        if record.get("amount_minor") not in (None, ""):
            raw = record["amount_minor"]
            if isinstance(raw, bool) or not str(raw).strip().isdigit():
                raise ValueError("amount_minor must be a whole number of minor units")
            amount = int(str(raw).strip())
        else:
            amount = parse_amount(str(text("amount")), currency)
    except ValueError as exc:
        raise InvalidInput(f"line {n}: {exc}", field="body") from None
    if amount > 10**15:
        raise InvalidInput(f"line {n}: the amount is too large", field="body")
    return ShopOrder(order_id, normalised, amount, currency, text("customer_id", False),
                     text("click_id", False))  # fmt: skip


async def create_report(
    pool: asyncpg.Pool, merchant_id: UUID, start: datetime, end: datetime,
    orders: list[ShopOrder],
) -> dict[str, Any]:  # fmt: skip
    if end <= start:
        raise InvalidInput("period_end must be after period_start", field="query.period_end")
    ours, in_period = await repo.our_orders(
        pool, merchant_id, [o.order_id for o in orders], start, end
    )
    click_ids = {}
    for order in orders:
        if order.click_id and order.order_id not in ours:
            compact = order.click_id.replace("-", "").lower()
            if len(compact) == 32 and not compact.strip("0123456789abcdef"):
                click_ids[order.order_id] = UUID(compact)
    known = await repo.clicks_named(pool, merchant_id, list(click_ids.values()))
    evidence = {
        order_id: f"its click id is our click on advocate {known[click]}'s link"
        for order_id, click in click_ids.items() if click in known
    }  # fmt: skip
    differences = [d.as_json() for d in compare(orders, ours, in_period, evidence)]
    async with transaction(pool) as conn:
        report = await repo.insert(conn, merchant_id, start, end, len(orders), differences)
    return await get_report(pool, merchant_id, report)


async def get_report(pool: asyncpg.Pool, merchant_id: UUID, report_id: UUID) -> dict[str, Any]:
    report = found(await repo.get(pool, merchant_id, report_id), "report", "report_id")
    return _with_counts(report)


def _with_counts(report: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {k: 0 for k in ("rewarded_but_cancelled", "amount_differs",
                                             "missing_here", "missing_there")}  # fmt: skip
    for d in report["differences"]:
        counts[d["kind"]] += 1
    return {**report, "counts": counts}


async def list_reports(pool: asyncpg.Pool, merchant_id: UUID, limit: int) -> list[dict[str, Any]]:
    return [_with_counts(r) for r in await repo.list_reports(pool, merchant_id, limit)]


async def apply_report(
    pool: asyncpg.Pool, merchant_id: UUID, report_id: UUID, now: datetime
) -> dict[str, Any]:
    """Reverse what the report found taken back (once)."""
    async with transaction(pool) as conn:
        report = found(
            await repo.get(conn, merchant_id, report_id, lock=True), "report", "report_id"
        )
        if report["applied_at"] is None:
            applied = []
            for difference in report["differences"]:
                if not takes_back(difference):
                    continue
                reversed_minor = await _take_back(conn, merchant_id, report_id, difference)
                applied.append({"order_id": difference["order_id"], "kind": difference["kind"],
                                "reversed_minor": reversed_minor})  # fmt: skip
            await repo.mark_applied(conn, report_id, applied, now)
    return await get_report(pool, merchant_id, report_id)


async def _take_back(
    conn: asyncpg.Connection, merchant: UUID, report: UUID, difference: dict[str, Any]
) -> int:
    order_id = difference["order_id"]
    await conversions_repo.lock(conn, f"order:{merchant}:{order_id}")
    purchase = await conversions_repo.signed_purchase(conn, merchant, order_id)
    if purchase is None:
        return 0
    refunded = await conversions_repo.refunded_total(conn, merchant, order_id)
    net = purchase.amount_minor - refunded
    if difference["kind"] == "rewarded_but_cancelled":
        taken_as_refunded = purchase.amount_minor
    else:
        theirs = int(difference["theirs_minor"])
        taken_as_refunded = refunded + max(0, net - theirs)
    why = f"reconciliation report {report}: {difference['detail']}"
    return await rewards_service.reverse_order_share(
        conn, merchant, purchase, min(taken_as_refunded, purchase.amount_minor), why
    )
