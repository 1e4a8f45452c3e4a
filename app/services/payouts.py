"""Payout batches: gather what is owed to advocates, reserve it in the ledger, export it for
PayPal or Wise, and settle or return it when the money went out or did not.

- Creating a batch (with an Idempotency-Key: the same key answers the same batch) takes the
  merchant's payout lock, locks every advocate reward holding an approved amount, reads the
  balances after the lock, and plans the lines (app/attribution/payouts.py): per advocate and
  currency, the approved total at or above the program's `min_payout_minor`, minus what the
  advocate owes after a clawback. Each line's rewards move approved → reserved at once, so a
  second batch — even created concurrently — cannot include them. What is not paid is kept on
  the batch with its reason (below the minimum, owed more than approved, no payout details).
- A batch moves created → sent → completed or failed, per line too. Completing a line moves its
  reserved amounts to paid and records the netted clawback as recovered; failing one returns
  them to approved. Every move is a ledger entry; what advocates owe is an append-only table.
- A refund of money already paid is a clawback: the advocate owes it
  (app/services/rewards.reverse_order_share, for refunds and reconciliation), and it is netted
  in their next line — never a negative line. A refund of money reserved in a line in flight is
  owed only once that line is paid (it went out anyway); if the line fails, nothing is owed.
"""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import asyncpg

from app.attribution.ledger import LedgerAction
from app.attribution.payouts import Balance, format_amount, plan_batch
from app.errors import Conflict, InvalidInput, NotFound
from app.services.programs import get_program
from app.services.rewards import move_all
from app.services.tenancy import found
from app.services.tx import transaction
from app.storage import exchange_rates as rates_repo
from app.storage import payouts as repo
from app.storage import rewards as rewards_repo
from app.storage.rules import current_rules

ExportFormat = Literal["paypal", "wise", "csv"]


async def create_batch(
    pool: asyncpg.Pool, merchant_id: UUID, key: str, program_id: UUID | None
) -> tuple[dict[str, Any], bool]:
    """The batch for this idempotency key (created now, or earlier), and whether it is new."""
    digest = hashlib.sha256(f"program={program_id}".encode()).hexdigest()
    if program_id is not None:
        await get_program(pool, merchant_id, program_id)
    async with transaction(pool) as conn:
        await repo.lock_merchant(conn, merchant_id)
        existing = await repo.batch_by_key(conn, merchant_id, key)
        if existing is not None:
            if existing["request_digest"] != digest:
                raise Conflict("this Idempotency-Key was used for another payout request",
                               field="idempotency-key")  # fmt: skip
            batch_id, created = existing["id"], False
        else:
            batch_id, created = await _create(conn, merchant_id, key, digest, program_id), True
    return await get_batch(pool, merchant_id, batch_id), created


async def _create(
    conn: asyncpg.Connection, merchant_id: UUID, key: str, digest: str, program_id: UUID | None
) -> UUID:
    reward_ids = await repo.approved_rewards(conn, merchant_id, program_id)
    rows = await repo.balances_of(conn, reward_ids)
    owed = await repo.owed(conn, merchant_id)
    rules = await current_rules(conn, list({r["program_id"] for r in rows}))
    balances = []
    for r in rows:
        who = (r["advocate_id"], r["currency"])
        minimum = rules[r["program_id"]][1].min_payout_minor if r["program_id"] in rules else 0
        balances.append(Balance(
            r["advocate_id"], r["currency"], int(r["approved"]), max(0, owed.get(who, 0)),
            tuple(r["reward_ids"]), minimum, bool(r["has_details"]),
        ))  # fmt: skip
    plan = plan_batch(balances)
    skipped = [{"advocate_id": str(s.advocate_id), "currency": s.currency,
                "approved_minor": s.approved_minor, "reason": s.reason}
               for s in plan.skipped]  # fmt: skip
    batch = await repo.insert_batch(conn, merchant_id, key, digest, program_id, skipped)
    for line in plan.lines:
        await repo.insert_line(
            conn, batch, merchant_id, line.advocate_id, line.currency, line.gross_minor,
            line.clawback_minor, list(line.reward_ids),
        )  # fmt: skip
        await move_all(conn, merchant_id, list(line.reward_ids), LedgerAction.RESERVE,
                        f"payout batch {batch}")  # fmt: skip
    return batch


async def get_batch(pool: asyncpg.Pool, merchant_id: UUID, batch_id: UUID) -> dict[str, Any]:
    batch = found(await repo.get_batch(pool, merchant_id, batch_id), "payout batch", "payout_id")
    lines = await repo.lines(pool, batch_id)
    totals: dict[str, int] = {}
    for line in lines:
        if line["status"] != "failed":
            totals[line["currency"]] = totals.get(line["currency"], 0) + line["amount_minor"]
    return {**batch, "lines": lines, "totals_minor": totals}


async def list_batches(pool: asyncpg.Pool, merchant_id: UUID, limit: int) -> list[dict[str, Any]]:
    return await repo.list_batches(pool, merchant_id, limit)


async def mark_sent(
    pool: asyncpg.Pool, merchant_id: UUID, batch_id: UUID, now: datetime
) -> dict[str, Any]:
    """The file was handed to the payment provider (idempotent)."""
    async with transaction(pool) as conn:
        batch = await _locked(conn, merchant_id, batch_id)
        if batch["status"] == "created":
            await repo.set_batch_status(conn, batch_id, "sent", now)
            for line in await repo.lines(conn, batch_id):
                await repo.set_line_status(conn, line["id"], "sent", None)
        elif batch["status"] != "sent":
            raise Conflict(f"the batch is {batch['status']}", field="payout_id")
    return await get_batch(pool, merchant_id, batch_id)


async def _locked(conn: asyncpg.Connection, merchant_id: UUID, batch_id: UUID) -> dict[str, Any]:
    return found(
        await repo.get_batch(conn, merchant_id, batch_id, lock=True), "payout batch", "payout_id"
    )


async def complete(
    pool: asyncpg.Pool, merchant_id: UUID, batch_id: UUID, failed: dict[UUID, str],
    now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """The provider paid every line but the `failed` ones (line id → reason): paid lines'
    reserved amounts become paid, failed lines' go back to approved. Idempotent."""
    async with transaction(pool) as conn:
        batch = await _locked(conn, merchant_id, batch_id)
        if batch["status"] in ("completed", "failed"):
            if batch["status"] == "failed":
                raise Conflict("the batch failed: nothing to complete", field="payout_id")
        else:
            lines = await repo.lines(conn, batch_id)
            unknown = set(failed) - {line["id"] for line in lines}
            if unknown:
                raise InvalidInput(f"no line {sorted(unknown)[0]} in this batch",
                                   field="body.failed_lines")  # fmt: skip
            for line in lines:
                if line["id"] in failed:
                    await _fail_line(conn, merchant_id, line, failed[line["id"]], now)
                else:
                    await _settle_line(conn, merchant_id, line, now)
            await repo.set_batch_status(conn, batch_id, "completed", now)
    return await get_batch(pool, merchant_id, batch_id)


async def fail(
    pool: asyncpg.Pool, merchant_id: UUID, batch_id: UUID, reason: str, now: datetime
) -> dict[str, Any]:
    """Nothing was paid: every line's reserved amounts go back to approved. Idempotent."""
    async with transaction(pool) as conn:
        batch = await _locked(conn, merchant_id, batch_id)
        if batch["status"] == "completed":
            raise Conflict("the batch was completed: it cannot fail", field="payout_id")
        if batch["status"] != "failed":
            for line in await repo.lines(conn, batch_id):
                await _fail_line(conn, merchant_id, line, reason, now)
            await repo.set_batch_status(conn, batch_id, "failed", now)
    return await get_batch(pool, merchant_id, batch_id)


async def _settle_line(
    conn: asyncpg.Connection, merchant: UUID, line: dict[str, Any], now: datetime
) -> None:
    ids = sorted(line["reward_ids"])
    await rewards_repo.lock_rewards(conn, merchant, ids)
    settled = await move_all(conn, merchant, ids, LedgerAction.SETTLE,
                             f"payout line {line['id']} paid")  # fmt: skip
    # What a refund reversed while the line was in flight went out anyway: the advocate owes it
    # from now on (not from the refund: had the line failed, nothing would be owed).
    in_flight = line["gross_minor"] - settled
    if in_flight > 0:
        await repo.add_owed(conn, merchant, line["advocate_id"], line["currency"], in_flight,
                            f"clawback: reversed while payout line {line['id']} was in flight,"
                            " paid anyway", line=line["id"])  # fmt: skip
    if line["clawback_minor"]:
        await repo.add_owed(conn, merchant, line["advocate_id"], line["currency"],
                            -line["clawback_minor"], f"netted in payout line {line['id']}",
                            line=line["id"])  # fmt: skip
    await repo.set_line_status(conn, line["id"], "completed", now)


async def _fail_line(
    conn: asyncpg.Connection, merchant: UUID, line: dict[str, Any], reason: str, now: datetime
) -> None:
    ids = sorted(line["reward_ids"])
    await rewards_repo.lock_rewards(conn, merchant, ids)
    await move_all(conn, merchant, ids, LedgerAction.RETURN,
                   f"payout line {line['id']} failed: {reason}")  # fmt: skip
    await repo.set_line_status(conn, line["id"], "failed", now, reason)


async def set_payout_details(
    pool: asyncpg.Pool, merchant_id: UUID, advocate_id: UUID, email: str | None,
    name: str | None, reference: str | None,
) -> None:  # fmt: skip
    async with transaction(pool) as conn:
        if not await repo.set_payout_details(conn, merchant_id, advocate_id, email, name,
                                             reference):  # fmt: skip
            raise NotFound("advocate not found", field="advocate_id")


# -- Exports --------------------------------------------------------------------------------------

_WISE_COLUMNS = ["name", "recipientEmail", "paymentReference", "receiverType", "amountCurrency",
                 "amount", "sourceCurrency", "targetCurrency", "type"]  # fmt: skip
_CSV_COLUMNS = ["line_id", "advocate_id", "external_id", "currency", "gross", "clawback",
                "amount", "status", "payout_email", "payout_reference", "reward_ids"]  # fmt: skip


async def export(
    pool: asyncpg.Pool, merchant_id: UUID, batch_id: UUID, fmt: ExportFormat,
    currency: str | None,
) -> tuple[str, list[UUID]]:  # fmt: skip
    """The batch's file (lines not failed), and the lines a PayPal or Wise file cannot hold (no
    payout email): reported, never dropped silently. PayPal and Wise take one currency per file:
    `currency` chooses it when the batch has several."""
    batch = await get_batch(pool, merchant_id, batch_id)
    lines = [line for line in batch["lines"] if line["status"] != "failed"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if fmt == "csv":
        writer.writerow(_CSV_COLUMNS)
        for line in lines:
            cur = line["currency"]
            writer.writerow([
                line["id"], line["advocate_id"], line["external_id"], cur,
                format_amount(line["gross_minor"], cur), format_amount(line["clawback_minor"], cur),
                format_amount(line["amount_minor"], cur), line["status"],
                line["payout_email"] or "", line["payout_reference"] or "",
                " ".join(str(r) for r in line["reward_ids"]),
            ])  # fmt: skip
        return out.getvalue(), []
    currencies = sorted({line["currency"] for line in lines})
    if currency is None and len(currencies) > 1:
        raise InvalidInput(f"the batch pays in {', '.join(currencies)}: choose one currency per "
                           "file", field="query.currency")  # fmt: skip
    chosen = currency or (currencies[0] if currencies else None)
    lines = [line for line in lines if line["currency"] == chosen]
    omitted = [line["id"] for line in lines if not line["payout_email"]]
    payable = [line for line in lines if line["payout_email"]]
    if fmt == "paypal":
        # PayPal Payouts' bulk file: no header; recipient, amount, currency, customer id (30
        # characters, no spaces), note, wallet.
        for line in payable:
            writer.writerow([
                line["payout_email"], format_amount(line["amount_minor"], line["currency"]),
                line["currency"], "".join(line["external_id"].split())[:30],
                f"Referral rewards (payout {str(batch_id)[:8]})", "PAYPAL",
            ])  # fmt: skip
    else:
        # Wise's "send by email" batch template: Wise asks each recipient for their bank details.
        writer.writerow(_WISE_COLUMNS)
        for line in payable:
            writer.writerow([
                line["payout_name"] or line["advocate_name"] or line["external_id"],
                line["payout_email"], f"Referral {str(batch_id)[:8]}", "PERSON", "target",
                format_amount(line["amount_minor"], line["currency"]), line["currency"],
                line["currency"], "EMAIL",
            ])  # fmt: skip
    return out.getvalue(), omitted


# -- Exchange rates -------------------------------------------------------------------------------


async def put_rates(
    pool: asyncpg.Pool, merchant_id: UUID, rates: list[tuple[str, str, date, Decimal]]
) -> None:
    """Rates for orders in another currency than the program's (processing converts with the
    rate of the order's UTC day, and stores it with the reward)."""
    if any(base == quote for base, quote, _, _ in rates):
        raise InvalidInput("base and quote must differ", field="body.rates")
    async with transaction(pool) as conn:
        await rates_repo.upsert(conn, merchant_id, rates)


async def list_rates(
    pool: asyncpg.Pool, merchant_id: UUID, base: str | None, quote: str | None, limit: int
) -> list[dict[str, Any]]:
    return await rates_repo.list_rates(pool, merchant_id, base, quote, limit)
