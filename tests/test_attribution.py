"""Attribution and reward rules, without I/O: table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from app.attribution.model import (
    Attributed,
    Click,
    Customer,
    Evidence,
    NotAttributed,
    ProgramTerms,
    Referrer,
    attribute,
)
from app.attribution.refunds import reversal_amount
from app.attribution.rewards import NoReward, Sale, compute_rewards
from app.attribution.rules import ProgramRules

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PROGRAM = UUID(int=1)
OTHER_PROGRAM = UUID(int=2)
ANNA = Referrer(UUID(int=10), PROGRAM, "cust-anna", b"anna-hash")
BEN = Referrer(UUID(int=11), PROGRAM, "cust-ben", None)
CLARA = Referrer(UUID(int=12), OTHER_PROGRAM, "cust-clara", None)
FRIEND = Customer("cust-friend", b"friend-hash")
TERMS = {PROGRAM: ProgramTerms(30, "last_click"), OTHER_PROGRAM: ProgramTerms(7, "last_click")}


def click(advocate: Referrer, ago: timedelta, *, bot: bool = False) -> Click:
    return Click(uuid4(), NOW - ago, uuid4(), advocate, bot)


DAY = timedelta(days=1)
ANNA_2D = click(ANNA, 2 * DAY)
BEN_1D = click(BEN, DAY)
ANNA_31D = click(ANNA, 31 * DAY)
BOT_1D = click(BEN, DAY, bot=True)
BEN_1MS = click(BEN, timedelta(milliseconds=1))
CLARA_8D = click(CLARA, 8 * DAY)


@pytest.mark.parametrize(
    ("name", "evidence", "terms", "expected"),
    [
        ("code beats click id", Evidence(NOW, FRIEND, code_advocate=BEN, click=ANNA_2D),
         TERMS, ("referral_code", BEN)),
        ("click id beats cookie", Evidence(NOW, FRIEND, click=BEN_1D, browser_clicks=(ANNA_2D,)),
         TERMS, ("click_id", BEN)),
        ("a later click of the browser does not take over the click id",
         Evidence(NOW, FRIEND, click=ANNA_2D, browser_clicks=(ANNA_2D, BEN_1D)),
         TERMS, ("click_id", ANNA)),
        ("cookie alone, last click", Evidence(NOW, FRIEND, browser_clicks=(ANNA_2D, BEN_1D)),
         TERMS, ("cookie", BEN)),
        ("cookie alone, first click", Evidence(NOW, FRIEND, browser_clicks=(ANNA_2D, BEN_1D)),
         {PROGRAM: ProgramTerms(30, "first_click")}, ("cookie", ANNA)),
        ("click id with first-click model credits the browser's first click",
         Evidence(NOW, FRIEND, click=BEN_1D, browser_clicks=(ANNA_2D, BEN_1D)),
         {PROGRAM: ProgramTerms(30, "first_click")}, ("click_id", ANNA)),
        ("click just inside the window", Evidence(NOW, FRIEND, click=click(ANNA, 30 * DAY)),
         TERMS, ("click_id", ANNA)),
        ("click outside the window", Evidence(NOW, FRIEND, click=ANNA_31D),
         TERMS, "outside the attribution window"),
        ("outside the window falls back to a cookie click inside it",
         Evidence(NOW, FRIEND, click=ANNA_31D, browser_clicks=(BEN_1D,)), TERMS, ("cookie", BEN)),
        ("a shorter window per program", Evidence(NOW, FRIEND, browser_clicks=(CLARA_8D,)),
         TERMS, "no human click inside the attribution window"),
        ("bot click never attributes", Evidence(NOW, FRIEND, click=BOT_1D),
         TERMS, "bot click"),
        ("bot click skipped in cookie evidence",
         Evidence(NOW, FRIEND, browser_clicks=(ANNA_2D, BOT_1D)), TERMS, ("cookie", ANNA)),
        ("click one millisecond before the conversion", Evidence(NOW, FRIEND, click=BEN_1MS),
         TERMS, ("click_id", BEN)),
        ("click after the conversion (beyond clock skew)",
         Evidence(NOW, FRIEND, click=click(BEN, -timedelta(minutes=5))), TERMS, "outside"),
        ("no evidence", Evidence(NOW, FRIEND), TERMS, "no referral code, click id or cookie"),
    ],
)  # fmt: skip
def test_attribution(
    name: str, evidence: Evidence, terms: dict[UUID, ProgramTerms], expected: object
) -> None:
    result = attribute(evidence, terms)
    if isinstance(expected, tuple):
        assert isinstance(result, Attributed), (name, result)
        assert (result.method, result.advocate) == expected, name
    else:
        assert isinstance(result, NotAttributed), (name, result)
        assert str(expected) in result.reason, (name, result.reason)


def sale(amount: int = 10_000, currency: str = "EUR", **kw: object) -> Sale:
    values: dict[str, object] = {
        "type": "purchase",
        "amount_minor": amount,
        "currency": currency,
        "occurred_at": NOW,
        "prior_rewarded_purchases": 0,
        "advocate_successful_referrals": 0,
    }
    values.update(kw)
    return Sale(**values)  # type: ignore[arg-type]


FIXED_BOTH = {"advocate_reward": {"kind": "fixed", "amount_minor": 1000},
              "friend_reward": {"kind": "fixed", "amount_minor": 500}}  # fmt: skip
TIERS = {
    "advocate_reward": {
        "kind": "tiered",
        "tiers": [
            {"min_referrals": 0, "amount_minor": 1000},
            {"min_referrals": 3, "amount_minor": 1500},
        ],
    }
}


def test_clicks_of_one_millisecond_are_decided_alike_in_whatever_order_they_were_read() -> None:
    # A double click, a prefetch: two clicks of one browser at the same millisecond. The order
    # PostgreSQL returns them in is not fixed; the decision must be.
    first = Click(UUID(int=100), NOW - DAY, uuid4(), ANNA, False)
    second = Click(UUID(int=200), NOW - DAY, uuid4(), BEN, False)
    for model in ("last_click", "first_click"):
        terms = {PROGRAM: ProgramTerms(30, model)}
        chosen = {
            attribute(Evidence(NOW, FRIEND, click=named, browser_clicks=browser), terms).advocate  # type: ignore[union-attr]
            for named in (first, second)
            for browser in ((first, second), (second, first))
        } | {
            attribute(Evidence(NOW, FRIEND, browser_clicks=browser), terms).advocate  # type: ignore[union-attr]
            for browser in ((first, second), (second, first))
        }
        assert chosen == {BEN if model == "last_click" else ANNA}  # the larger id is the later


@pytest.mark.parametrize(
    ("rules", "the_sale", "expected"),
    [
        (FIXED_BOTH, sale(), {"advocate": 1000, "friend": 500}),
        ({"advocate_reward": {"kind": "percent", "percent": "10"}}, sale(12_345),
         {"advocate": 1234}),
        ({"advocate_reward": {"kind": "percent", "percent": "10", "cap_minor": 800}}, sale(),
         {"advocate": 800}),
        ({"advocate_reward": {"kind": "percent", "percent": "7.5"},
          "friend_reward": {"kind": "percent", "percent": "5"}},
         sale(999), {"advocate": 74, "friend": 49}),
        (TIERS, sale(advocate_successful_referrals=2), {"advocate": 1000}),
        (TIERS, sale(advocate_successful_referrals=3), {"advocate": 1500}),
        ({**FIXED_BOTH, "min_order_minor": 5000}, sale(4999), "below the minimum"),
        ({**FIXED_BOTH, "min_order_minor": 5000}, sale(5000), {"advocate": 1000, "friend": 500}),
        (FIXED_BOTH, sale(currency="USD"), "currency USD is not the program currency EUR"),
        (FIXED_BOTH, sale(prior_rewarded_purchases=1), "first purchase"),
        ({**FIXED_BOTH, "reward_event": "every_purchase", "max_rewarded_purchases": 3},
         sale(prior_rewarded_purchases=2), {"advocate": 1000, "friend": 500}),
        ({**FIXED_BOTH, "reward_event": "every_purchase", "max_rewarded_purchases": 3},
         sale(prior_rewarded_purchases=3), "first 3 purchases"),
        ({**FIXED_BOTH, "reward_event": "signup"}, sale(0, None, type="signup"),
         {"advocate": 1000, "friend": 500}),
        ({**FIXED_BOTH, "reward_event": "signup"}, sale(), "rewards signups"),
        (FIXED_BOTH, sale(0, None, type="signup"), "rewards purchases"),
    ],
)  # fmt: skip
def test_reward_computation(rules: dict, the_sale: Sale, expected: object) -> None:
    result = compute_rewards(ProgramRules(**rules), the_sale)
    if isinstance(expected, dict):
        assert not isinstance(result, NoReward), result
        assert {d.beneficiary: d.amount_minor for d in result} == expected
        held = NOW + timedelta(days=14)
        assert all(d.currency == "EUR" and d.hold_until == held for d in result)
        assert all(isinstance(d.amount_minor, int) for d in result)
    else:
        assert isinstance(result, NoReward)
        assert str(expected) in result.reason


@pytest.mark.parametrize(
    ("reward", "already", "order", "refunded", "expected"),
    [
        (1000, 0, 10_000, 10_000, 1000),  # full refund
        (1000, 0, 10_000, 2_500, 250),  # a quarter
        (1000, 250, 10_000, 5_000, 250),  # cumulative half, a quarter already taken
        (1000, 1000, 10_000, 10_000, 0),  # nothing left
        (1000, 0, 10_000, 12_000, 1000),  # more refunded than ordered: all, never more
        (999, 0, 3, 1, 333),  # rounded down
    ],
)
def test_refund_reverses_proportionally(
    reward: int, already: int, order: int, refunded: int, expected: int
) -> None:
    assert reversal_amount(reward, already, order, refunded) == expected


@pytest.mark.parametrize(
    "rules",
    [
        {"advocate_reward": {"kind": "fixed", "amount_minor": 10.5}},
        {"advocate_reward": {"kind": "percent", "percent": "150"}},
        {"currency": "euro"},
        {"reward_event": "signup", "advocate_reward": {"kind": "percent", "percent": "5"}},
        {"advocate_reward": {"kind": "tiered", "tiers": [{"min_referrals": 2, "amount_minor": 1}]}},
    ],
)
def test_invalid_rules_are_refused(rules: dict) -> None:
    with pytest.raises(ValidationError):
        ProgramRules(**rules)


def test_percent_is_decimal_not_float() -> None:
    rule = ProgramRules(advocate_reward={"kind": "percent", "percent": "7.5"})
    assert rule.advocate_reward.percent == Decimal("7.5")  # type: ignore[union-attr]
