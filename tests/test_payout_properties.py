"""Payouts by generated sequences (hypothesis) against real PostgreSQL: random purchases,
approvals, batches, sends, completions with failed lines, whole failures and refunds (including
of money already paid or in a batch in flight), through the same services and ledger moves as
the API. After every step: each reward's ledger entries sum to its amount, no balance is
negative, no advocate owes a negative amount, no reward is in two open lines, and what the
completed lines sent equals what the ledger holds as paid plus what advocates still owe."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.attribution.ledger import plan_reversal
from app.attribution.rewards import RewardDraft
from app.attribution.rules import ProgramRules
from app.services import payouts, rewards
from app.services.merchants import create_merchant
from app.services.tx import transaction
from app.storage import rewards as rewards_repo
from app.storage import rules as rules_repo
from tests.conftest import TEST_KEYRING

# A month at a time, so that sequences that matter (a payout, then a refund of it, then the next
# payout) come often: purchases, approval, a batch, what happened to it, refunds.
month = st.tuples(
    st.lists(st.tuples(st.just("reward"), st.integers(0, 1), st.integers(100, 5000)),
             max_size=3),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["none", "send", "complete", "fail"]),
    st.lists(st.booleans(), max_size=3),
    st.lists(st.tuples(st.just("refund"), st.integers(0, 30), st.integers(1, 100)),
             max_size=2),
)  # fmt: skip


def _flatten(months: list[Any]) -> list[tuple[Any, ...]]:
    plan: list[tuple[Any, ...]] = []
    for purchases, approve, batch, outcome, mask, refunds in months:
        plan += purchases
        plan += [("approve",)] if approve else []
        plan += [("batch",)] if batch else []
        plan += {"none": [], "send": [("send",)], "complete": [("complete", mask)],
                 "fail": [("fail",)]}[outcome]  # fmt: skip
        plan += refunds
    return plan


steps = st.lists(month, min_size=1, max_size=5).map(_flatten)
NOW = datetime.now(UTC)


async def _setup(pool: asyncpg.Pool) -> tuple[UUID, UUID, list[UUID]]:
    merchant = (await create_merchant(pool, TEST_KEYRING, "Payouts")).id
    async with transaction(pool) as conn:
        program = await conn.fetchval(
            "INSERT INTO programs (merchant_id, name, destination_url, allowed_domains)"
            " VALUES ($1, 'p', 'https://shop.example.com/', '{shop.example.com}') RETURNING id",
            merchant,
        )
        await rules_repo.save_rules(conn, program, ProgramRules(hold_days=0))
        advocates = [
            await conn.fetchval(
                "INSERT INTO advocates (merchant_id, program_id, external_id, referral_code,"
                " payout_email) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                merchant,
                program,
                f"a{n}",
                f"CODE-{uuid4().hex[:8]}",
                f"a{n}@x.example",
            )
            for n in range(3)
        ]
    return merchant, program, advocates


async def _reward(pool: asyncpg.Pool, merchant: UUID, program: UUID, advocate: UUID,
                  amount: int) -> UUID:  # fmt: skip
    async with transaction(pool) as conn:
        conversion = uuid4()
        await conn.execute(
            "INSERT INTO conversions (id, merchant_id, event_id, type, order_id, amount_minor,"
            " currency, occurred_at, received_at, state, program_id, advocate_id)"
            " VALUES ($1, $2, $3, 'purchase', $3, $4, 'EUR', now(), now(), 'attributed', $5, $6)",
            conversion, merchant, conversion.hex, amount * 10, program, advocate,
        )  # fmt: skip
        draft = RewardDraft("advocate", amount, "EUR", NOW - timedelta(days=1))
        return await rewards_repo.create_reward(
            conn, merchant_id=merchant, program_id=program, advocate_id=advocate,
            conversion_id=conversion, customer_id=None, rules_version=1, draft=draft, reason="t",
        )  # fmt: skip


async def _refund(pool: asyncpg.Pool, merchant: UUID, reward: UUID, percent: int) -> None:
    """What refund processing does: lock, read after the lock, reverse, record the clawback."""
    async with transaction(pool) as conn:
        await rewards_repo.lock_rewards(conn, merchant, [reward])
        row = await conn.fetchrow("SELECT advocate_id, amount_minor FROM rewards WHERE id = $1",
                                  reward)  # fmt: skip
        balance = (await rewards_repo.balances(conn, [reward]))[reward]
        standing = sum(balance[s] for s in ("pending", "held", "approved", "paid", "reserved"))
        due = min(standing, row["amount_minor"] * percent // 100)
        if due:
            moves = plan_reversal(balance, due)
            await rewards_repo.write_moves(conn, reward, merchant, moves, "refund")
            await rewards.record_clawbacks(conn, merchant, row["advocate_id"], "EUR", reward,
                                           "advocate", moves, "refund")  # fmt: skip


async def _open_batch(pool: asyncpg.Pool, merchant: UUID) -> UUID | None:
    batch: UUID | None = await pool.fetchval(
        "SELECT id FROM payout_batches WHERE merchant_id = $1 AND status IN ('created', 'sent')"
        " ORDER BY created_at DESC LIMIT 1",
        merchant,
    )
    return batch


async def _check(pool: asyncpg.Pool, merchant: UUID) -> None:
    rows = await pool.fetch(
        "SELECT r.id, r.amount_minor, b.state, b.amount_minor AS held FROM rewards r"
        " JOIN reward_balances b ON b.reward_id = r.id WHERE r.merchant_id = $1",
        merchant,
    )
    sums: dict[UUID, int] = {}
    for r in rows:
        assert r["held"] >= 0, dict(r)
        sums[r["id"]] = sums.get(r["id"], 0) + r["held"]
    assert all(sums[r["id"]] == r["amount_minor"] for r in rows)
    owed_rows = await pool.fetch(
        "SELECT advocate_id, sum(amount_minor) AS owed FROM advocate_owed WHERE merchant_id = $1"
        " GROUP BY advocate_id",
        merchant,
    )
    assert all(r["owed"] >= 0 for r in owed_rows)
    open_rewards = await pool.fetch(
        "SELECT unnest(reward_ids) AS reward FROM payout_lines WHERE merchant_id = $1"
        " AND status IN ('created', 'sent')",
        merchant,
    )
    assert len(open_rewards) == len({r["reward"] for r in open_rewards})
    paid = await pool.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM reward_balances WHERE merchant_id = $1"
        " AND state = 'paid'",
        merchant,
    )
    owed = sum(int(r["owed"]) for r in owed_rows)
    sent = await pool.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM payout_lines WHERE merchant_id = $1"
        " AND status = 'completed'",
        merchant,
    )
    assert paid + owed == sent, (paid, owed, sent)


async def _play(dsn: str, plan: list[tuple[Any, ...]]) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    assert pool is not None
    try:
        merchant, program, advocates = await _setup(pool)
        created: list[UUID] = []
        keys = 0
        for step in plan:
            kind = step[0]
            if kind == "reward":
                created.append(await _reward(pool, merchant, program, advocates[step[1]], step[2]))
            elif kind == "approve":
                await rewards.approve_due(pool, NOW)
            elif kind == "batch":
                keys += 1
                await payouts.create_batch(pool, merchant, f"key-{keys}", None)
            elif kind in ("send", "complete", "fail"):
                batch = await _open_batch(pool, merchant)
                if batch is None:
                    continue
                if kind == "send":
                    await payouts.mark_sent(pool, merchant, batch, NOW)
                elif kind == "fail":
                    await payouts.fail(pool, merchant, batch, "bank down", NOW)
                else:
                    lines = (await payouts.get_batch(pool, merchant, batch))["lines"]
                    failed = {line["id"]: "closed" for line, f in zip(lines, step[1], strict=False)
                              if f}  # fmt: skip
                    await payouts.complete(pool, merchant, batch, failed, NOW)
            elif kind == "refund" and created:
                await _refund(pool, merchant, created[step[1] % len(created)], step[2])
            await _check(pool, merchant)
    finally:
        await pool.close()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
# Found by CI: a refund of money in a line in flight was owed at once, netted in a second line,
# and then the first line failed: the advocate was paid short and owed a negative amount.
@example(
    plan=[
        ("reward", 0, 100),
        ("approve",),
        ("batch",),
        ("refund", 0, 1),
        ("reward", 0, 100),
        ("approve",),
        ("batch",),
        ("complete", []),
        ("complete", [True]),
    ]
)
def test_payouts_keep_the_ledger_whole_under_any_sequence(
    database_url: str, plan: list[tuple[Any, ...]]
) -> None:
    asyncio.run(_play(database_url, plan))
