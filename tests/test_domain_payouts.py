"""Payouts, renewals and currencies as pure functions: amounts written and read exactly in 0, 2
and 3 decimals, which balances a batch pays and why not the others, conversion at a rate, and
the recurring rules at their edges."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.attribution.payouts import Balance, format_amount, parse_amount, plan_batch
from app.attribution.rewards import convert, renewal_rewards
from app.attribution.rules import ProgramRules
from app.bounds import MAX_AMOUNT_MINOR


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [(12345, "EUR", "123.45"), (5, "EUR", "0.05"), (500, "JPY", "500"), (1234, "KWD", "1.234"),
     (1, "BHD", "0.001"), (0, "USD", "0.00")],
)  # fmt: skip
def test_amounts_are_written_and_read_exactly(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text
    assert parse_amount(text, currency) == minor


@given(minor=st.integers(min_value=0, max_value=MAX_AMOUNT_MINOR),
       currency=st.sampled_from(["EUR", "JPY", "KWD", "CLF"]))  # fmt: skip
def test_every_amount_round_trips(minor: int, currency: str) -> None:
    assert parse_amount(format_amount(minor, currency), currency) == minor


@pytest.mark.parametrize("text", ["1.005", "abc", "-1", "NaN", "1e400000"])
def test_amounts_with_more_decimals_than_the_currency_or_not_amounts_are_refused(
    text: str,
) -> None:
    with pytest.raises(ValueError):
        parse_amount(text, "EUR")


def balance(approved: int, owed: int = 0, minimum: int = 0, details: bool = True) -> Balance:
    return Balance(uuid.uuid4(), "EUR", approved, owed, (uuid.uuid4(),), minimum, details)


def test_a_batch_pays_what_is_due_and_says_why_it_pays_nothing_else() -> None:
    due, small = balance(5000), balance(900, minimum=1000)
    owing, anonymous = balance(800, owed=800), balance(2000, details=False)
    plan = plan_batch([due, small, owing, anonymous, balance(0)])
    assert [(line.advocate_id, line.amount_minor) for line in plan.lines] == [
        (due.advocate_id, 5000)
    ]
    reasons = {s.advocate_id: s.reason for s in plan.skipped}
    assert "below the minimum payout of 10.00" in reasons[small.advocate_id]
    assert "owes 8.00" in reasons[owing.advocate_id]
    assert "no payout details" in reasons[anonymous.advocate_id]
    netted = plan_batch([balance(3000, owed=1000)]).lines[0]
    assert (netted.gross_minor, netted.clawback_minor, netted.amount_minor) == (3000, 1000, 2000)


def test_conversion_is_exact_and_rounds_down_across_decimals() -> None:
    assert convert(10_000, 2, 2, Decimal("0.9234")) == 9234
    assert convert(1500, 0, 2, Decimal("0.0061")) == 915  # 1,500 JPY → 9.15 EUR
    assert convert(999, 2, 3, Decimal("0.3")) == 2997  # 9.99 EUR → 2.997 KWD
    assert convert(1, 2, 2, Decimal("0.5")) == 0


FIRST = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("recurring", "at", "earlier", "earns"),
    [
        ({"mode": "months", "months": 1}, datetime(2026, 2, 28, 11, 59, tzinfo=UTC), 0, True),
        ({"mode": "months", "months": 1}, datetime(2026, 2, 28, 12, 0, tzinfo=UTC), 0, False),
        ({"mode": "payments", "payments": 3}, datetime(2026, 6, 1, tzinfo=UTC), 2, True),
        ({"mode": "payments", "payments": 3}, datetime(2026, 6, 1, tzinfo=UTC), 3, False),
        ({"mode": "lifetime"}, datetime(2036, 1, 1, tzinfo=UTC), 500, True),
        ({"mode": "none"}, datetime(2026, 2, 1, tzinfo=UTC), 0, False),
    ],
)
def test_recurring_rules_at_their_edges(
    recurring: dict[str, object], at: datetime, earlier: int, earns: bool
) -> None:
    rules = ProgramRules.model_validate({"recurring": recurring, "currency": "EUR"})
    result = renewal_rewards(rules, 5000, "EUR", at, FIRST, earlier)
    assert isinstance(result, list) is earns
