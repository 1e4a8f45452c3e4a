"""Money, by generated examples (hypothesis): the domain's functions over any amounts, and the
ledger over generated sequences of moves (fraud holds and reviews included) against real
PostgreSQL. The invariants: balances always sum to the reward, nothing is ever negative, a
refund never takes more than the order or the reward, and what is paid is what the paid entries
say."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.attribution.ledger import (
    LedgerAction,
    Move,
    RewardState,
    plan_reversal,
    plan_transition,
)
from app.attribution.refunds import reversal_amount, settle_refund
from app.attribution.rewards import RewardDraft, Sale, compute_rewards
from app.attribution.rules import ProgramRules
from app.bounds import MAX_AMOUNT_MINOR
from app.storage import rewards as rewards_repo

amounts = st.integers(min_value=0, max_value=MAX_AMOUNT_MINOR)
positive = st.integers(min_value=1, max_value=MAX_AMOUNT_MINOR)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@given(order=amounts, requests=st.lists(st.one_of(st.none(), amounts), max_size=8))
def test_refunds_of_an_order_never_sum_beyond_it(order: int, requests: list[int | None]) -> None:
    refunded = 0
    for requested in requests:
        settlement = settle_refund(order, refunded, requested, "o")
        assert 0 <= settlement.applied_minor <= order - refunded
        asked = order - refunded if requested is None else requested
        assert settlement.applied_minor + settlement.refused_minor == asked
        refunded += settlement.applied_minor
    assert refunded <= order


@given(reward=positive, order=positive, refunds=st.lists(positive, max_size=8))
def test_reversals_never_exceed_the_reward_and_a_full_refund_takes_it_all(
    reward: int, order: int, refunds: list[int]
) -> None:
    reversed_total, refunded = 0, 0
    for requested in refunds:
        applied = settle_refund(order, refunded, requested, "o").applied_minor
        refunded += applied
        due = reversal_amount(reward, reversed_total, order, refunded)
        assert due >= 0
        reversed_total += due
        assert reversed_total <= reward
        # Proportional, rounded down: never more than the refunded share of the reward
        # (compared exactly, in integers).
        if refunded < order:
            assert reversed_total * order <= reward * refunded
    if refunded >= order:
        assert reversed_total == reward


percents = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(100), places=3)


@given(
    percent=percents,
    cap=st.one_of(st.none(), positive),
    amount=amounts,
    fixed=positive,
)
def test_rewards_are_whole_minor_units_never_negative_and_within_their_cap(
    percent: Decimal, cap: int | None, amount: int, fixed: int
) -> None:
    rules = ProgramRules(
        reward_event="every_purchase",
        currency="EUR",
        advocate_reward={"kind": "fixed", "amount_minor": fixed},
        friend_reward={"kind": "percent", "percent": percent, "cap_minor": cap},
    )
    sale = Sale("purchase", amount, "EUR", NOW, 0, 0)
    drafts = compute_rewards(rules, sale)
    assert isinstance(drafts, list)
    by_side = {d.beneficiary: d for d in drafts}
    assert by_side["advocate"].amount_minor == fixed
    friend: RewardDraft | None = by_side.get("friend")
    expected = int(Decimal(amount) * percent / 100)  # rounded down, exactly
    if cap is not None:
        expected = min(expected, cap)
    assert (friend.amount_minor if friend else 0) == expected
    assert all(isinstance(d.amount_minor, int) and d.amount_minor > 0 for d in drafts)


# -- The ledger against PostgreSQL ------------------------------------------------------------

moves = st.lists(
    st.one_of(
        st.just(("approve",)),
        st.just(("pay",)),
        st.just(("reject",)),
        st.tuples(st.just("refund"), st.integers(min_value=1, max_value=20_000)),
        # The fraud rules' hold (all, or a cap's excess), and a reviewer's release or refusal.
        st.tuples(st.just("hold"), st.integers(min_value=1, max_value=5_000)),
        st.just(("release",)),
        st.just(("refuse",)),
    ),
    max_size=12,
)


async def _play(dsn: str, reward_minor: int, steps: list[tuple[Any, ...]]) -> None:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    scenario = conn.transaction()  # rolled back at the end; each step is a savepoint in it
    await scenario.start()
    try:
        merchant = await conn.fetchval(
            "INSERT INTO merchants (name, webhook_secret) VALUES ('Ledger', 'whsec_x') RETURNING id"
        )
        conversion = uuid4()
        await conn.execute(
            "INSERT INTO conversions (id, merchant_id, event_id, type, order_id, amount_minor,"
            " currency, occurred_at, received_at, state) VALUES ($1, $2, 'e', 'purchase', 'o',"
            " 10000, 'EUR', now(), now(), 'attributed')",
            conversion, merchant,
        )  # fmt: skip
        draft = RewardDraft("advocate", reward_minor, "EUR", NOW - timedelta(days=1))
        reward = await rewards_repo.create_reward(
            conn, merchant_id=merchant, program_id=uuid4(), advocate_id=uuid4(),
            conversion_id=conversion, customer_id=None, rules_version=1, draft=draft, reason="t",
        )  # fmt: skip
        refunded, reversed_total, paid = 0, 0, 0
        for step in steps:
            async with conn.transaction():
                await rewards_repo.lock_rewards_of_conversion(conn, merchant, conversion)
                [balance] = await rewards_repo.rewards_of_conversion(conn, merchant, conversion)
                b = balance["balances"]
                if step[0] == "approve":
                    await rewards_repo.approve_pending(conn, [reward])
                elif step[0] == "pay" and b["approved"]:
                    await _entry(conn, reward, merchant, "approved", "paid", b["approved"])
                    paid += b["approved"]
                elif step[0] in ("reject", "release", "refuse"):
                    action = {"reject": LedgerAction.REJECT, "release": LedgerAction.RELEASE,
                              "refuse": LedgerAction.REFUSE}[step[0]]  # fmt: skip
                    await rewards_repo.write_moves(
                        conn, reward, merchant, plan_transition(b, action), step[0]
                    )
                elif step[0] == "hold" and b["pending"]:
                    hold = Move(RewardState.PENDING, RewardState.HELD, min(step[1], b["pending"]))
                    await rewards_repo.write_moves(conn, reward, merchant, [hold], "hold")
                elif step[0] == "refund":
                    applied = settle_refund(10_000, refunded, step[1], "o").applied_minor
                    refunded += applied
                    due = reversal_amount(reward_minor, b["reversed"], 10_000, refunded)
                    # Rejected money is not reversed again: only what is still owed.
                    due = min(due, b["pending"] + b["held"] + b["approved"] + b["paid"])
                    if due:
                        moves = plan_reversal(b, due)
                        await rewards_repo.write_moves(
                            conn, reward, merchant, moves, "r", conversion
                        )
                        reversed_total += due
            after = (await rewards_repo.balances(conn, [reward]))[reward]
            assert sum(after.values()) == reward_minor
            assert all(v >= 0 for v in after.values()), after
            entries_paid = await conn.fetchval(
                "SELECT coalesce(sum(amount_minor) FILTER (WHERE to_state = 'paid'), 0)"
                " - coalesce(sum(amount_minor) FILTER (WHERE from_state = 'paid'), 0)"
                " FROM reward_entries WHERE reward_id = $1",
                reward,
            )
            assert after["paid"] == entries_paid
    finally:
        await scenario.rollback()
        await conn.close()


async def _entry(
    conn: asyncpg.Connection, reward: UUID, merchant: UUID, src: str, dst: str, amount: int
) -> None:
    await conn.execute(
        "INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state, amount_minor,"
        " reason) VALUES ($1, $2, $3, $4, $5, 'generated')",
        reward, merchant, src, dst, amount,
    )  # fmt: skip


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reward_minor=st.integers(min_value=1, max_value=5_000), steps=moves)
def test_the_ledger_stays_whole_under_any_sequence_of_moves(
    database_url: str, reward_minor: int, steps: list[tuple[Any, ...]]
) -> None:
    asyncio.run(_play(database_url, reward_minor, steps))
