"""The fraud rules as pure functions: each rule at the edges of its thresholds, the action a
decision takes, what it does to the ledger, and the email and landing-query helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.attribution.fraud import (
    AdvocateFacts,
    ConversionFacts,
    FraudRules,
    RuleAction,
    ad_click_param,
    canonical_email,
    cap_period,
    evaluate,
    is_disposable,
    reward_moves,
)
from app.attribution.ledger import LedgerAction, Move, RewardState, plan_reversal, plan_transition
from app.attribution.rules import ProgramRules
from app.security import email_prints

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY = b"k" * 32
ANNA = email_prints(KEY, "anna.maria@gmail.com")
ADVOCATE = AdvocateFacts("cust-anna", None, ANNA.canonical, frozenset(ANNA.near))
ALL_OFF = FraudRules.model_validate({name: {"action": "off"} for name in FraudRules.model_fields})


def purchase(**facts: object) -> ConversionFacts:
    base: dict[str, object] = {"type": "purchase", "occurred_at": NOW, "amount_minor": 5000,
                               "currency": "EUR", "customer_id": "cust-ben"}  # fmt: skip
    return ConversionFacts(**{**base, **facts})  # type: ignore[arg-type]


def rules(**changes: dict[str, object]) -> FraudRules:
    return FraudRules.model_validate({**ALL_OFF.model_dump(), **changes})


def fired(decision_rules: FraudRules, facts: ConversionFacts) -> dict[str, str]:
    decision = evaluate(decision_rules, ADVOCATE, facts)
    return {f.rule: f.action.value for f in decision.findings}


@pytest.mark.parametrize(
    ("email", "canonical"),
    [
        ("Anna.Maria+shoes@GMAIL.com", "annamaria@gmail.com"),
        ("a.n.n.a.maria@googlemail.com", "annamaria@gmail.com"),
        ("anna+1@example.com", "anna@example.com"),
        ("an.na@example.com", "an.na@example.com"),  # dots count outside Gmail
    ],
)
def test_canonical_email_drops_case_tags_and_gmail_dots(email: str, canonical: str) -> None:
    assert canonical_email(email) == canonical


@pytest.mark.parametrize(
    ("email", "rule"),
    [
        ("cust-anna", "customer id"),
        ("anna.maria+2@gmail.com", "normalised"),
        ("a.nna.maria@gmail.com", "normalised"),
        ("annamarie@gmail.com", "one edit"),  # substitution
        ("annamari@gmail.com", "one edit"),  # deletion
        ("annnamaria@gmail.com", "one edit"),  # insertion
        ("anamarai@gmail.com", None),  # two edits
        ("annamaria@yahoo.com", None),  # another provider is another mailbox
        ("ben@example.com", None),
    ],
)
def test_self_referral_by_id_normalised_email_and_one_edit(email: str, rule: str | None) -> None:
    if email == "cust-anna":
        facts = purchase(customer_id="cust-anna")
    else:
        prints = email_prints(KEY, email)
        facts = purchase(email_canonical=prints.canonical, email_near=frozenset(prints.near))
    self_referral = rules(self_referral={"action": "reject", "max_edit_distance": 1})
    decision = evaluate(self_referral, ADVOCATE, facts)
    if rule is None:
        assert decision.findings == () and decision.outcome == "none"
    else:
        assert decision.outcome == "reject"
        words = {"customer id": "customer id", "normalised": "+tag", "one edit": "one character"}
        assert words[rule] in decision.findings[0].reason


def test_self_referral_within_one_edit_is_off_at_distance_zero() -> None:
    prints = email_prints(KEY, "annamarie@gmail.com")
    facts = purchase(email_canonical=prints.canonical, email_near=frozenset(prints.near))
    strict = rules(self_referral={"action": "reject", "max_edit_distance": 0})
    assert fired(strict, facts) == {}


@pytest.mark.parametrize(("clicks", "fires"), [(20, False), (21, True)])
def test_click_flood_fires_above_its_maximum(clicks: int, fires: bool) -> None:
    flood = rules(click_flood={"action": "hold", "max_clicks": 20, "minutes": 10})
    assert ("click_flood" in fired(flood, purchase(flood_clicks=clicks))) is fires


@pytest.mark.parametrize(("conversions", "fires"), [(3, False), (4, True)])
def test_conversion_velocity_fires_above_its_maximum(conversions: int, fires: bool) -> None:
    velocity = rules(conversion_velocity={"action": "hold", "max_conversions": 3, "days": 7})
    facts = purchase(velocity_conversions=conversions)
    assert ("conversion_velocity" in fired(velocity, facts)) is fires


@pytest.mark.parametrize(("seconds", "fires"), [(0, True), (9, True), (10, False), (3600, False)])
def test_fast_conversion_fires_under_its_minimum(seconds: int, fires: bool) -> None:
    fast = rules(fast_conversion={"action": "hold", "min_seconds": 10})
    facts = purchase(clicked_at=NOW - timedelta(seconds=seconds))
    assert ("fast_conversion" in fired(fast, facts)) is fires
    signup = ConversionFacts("signup", NOW, clicked_at=NOW)
    assert fired(fast, signup) == {}  # a purchase rule


@pytest.mark.parametrize(("amount", "fires"), [(100_000, False), (100_001, True)])
def test_high_value_order_fires_above_its_amount(amount: int, fires: bool) -> None:
    high = rules(high_value_order={"action": "hold", "above_minor": 100_000})
    assert ("high_value_order" in fired(high, purchase(amount_minor=amount))) is fires


def test_disposable_email_paid_ad_click_and_same_device_fire_on_their_fact() -> None:
    on = rules(disposable_email={"action": "hold"}, paid_ad_click={"action": "flag"},
               same_device_as_advocate={"action": "hold"})  # fmt: skip
    assert fired(on, purchase(email_disposable=True)) == {"disposable_email": "hold"}
    assert fired(on, purchase(ad_click_param="gclid")) == {"paid_ad_click": "flag"}
    assert fired(on, purchase(shared_device="the same browser (our cookie)")) == {
        "same_device_as_advocate": "hold"
    }
    assert fired(on, purchase()) == {}


def test_the_strongest_action_wins_and_flag_changes_nothing_in_the_ledger() -> None:
    mixed = rules(fast_conversion={"action": "flag", "min_seconds": 10},
                  high_value_order={"action": "hold", "above_minor": 1000},
                  disposable_email={"action": "reject"})  # fmt: skip
    facts = purchase(clicked_at=NOW, amount_minor=5000)
    assert evaluate(mixed, ADVOCATE, facts).outcome == "hold"
    assert (
        evaluate(mixed, ADVOCATE, purchase(email_disposable=True, amount_minor=5000)).outcome
        == "reject"
    )
    flagged = evaluate(mixed, ADVOCATE, purchase(clicked_at=NOW, amount_minor=10))
    assert flagged.outcome == "flag" and not flagged.holds
    assert reward_moves(flagged, "advocate", 1000) == []


def test_hold_and_reject_move_the_whole_reward_and_a_ban_rejects() -> None:
    hold = evaluate(rules(high_value_order={"action": "hold", "above_minor": 0}), ADVOCATE,
                    purchase())  # fmt: skip
    assert hold.holds and reward_moves(hold, "friend", 700) == [
        Move(RewardState.PENDING, RewardState.HELD, 700)
    ]
    banned = AdvocateFacts("cust-anna", banned=True)
    ban = evaluate(ALL_OFF, banned, purchase())
    assert ban.outcome == "reject" and ban.findings[0].rule == "advocate_banned"
    assert reward_moves(ban, "advocate", 1000) == [
        Move(RewardState.PENDING, RewardState.REJECTED, 1000)
    ]


@pytest.mark.parametrize(
    ("so_far", "reward", "excess"),
    [(0, 1000, 0), (4000, 1000, 0), (4500, 1000, 500), (5000, 1000, 1000), (9000, 1000, 1000)],
)
def test_reward_cap_holds_only_the_excess(so_far: int, reward: int, excess: int) -> None:
    cap = rules(reward_cap={"action": "hold", "period": "month", "cap_minor": 5000})
    decision = evaluate(cap, ADVOCATE, purchase(period_rewards_minor=so_far,
                                                advocate_reward_minor=reward))  # fmt: skip
    assert decision.cap_excess_minor == excess
    assert decision.holds is (excess > 0)
    expected = [Move(RewardState.PENDING, RewardState.HELD, excess)] if excess else []
    assert reward_moves(decision, "advocate", reward) == expected
    assert reward_moves(decision, "friend", 700) == []  # the cap is the advocate's


def test_cap_periods_are_calendar_periods_in_utc() -> None:
    at = datetime(2026, 12, 3, 15, 30, tzinfo=UTC)  # a Thursday
    assert cap_period("day", at) == (datetime(2026, 12, 3, tzinfo=UTC),
                                     datetime(2026, 12, 4, tzinfo=UTC))  # fmt: skip
    assert cap_period("week", at) == (datetime(2026, 11, 30, tzinfo=UTC),
                                      datetime(2026, 12, 7, tzinfo=UTC))  # fmt: skip
    assert cap_period("month", at) == (datetime(2026, 12, 1, tzinfo=UTC),
                                       datetime(2027, 1, 1, tzinfo=UTC))  # fmt: skip


def test_a_held_amount_is_never_approved_and_a_review_moves_it() -> None:
    balance = {"pending": 0, "held": 1000, "approved": 0, "reserved": 0, "paid": 0,
               "reversed": 0, "rejected": 0}  # fmt: skip
    assert plan_transition(balance, LedgerAction.APPROVE) == []
    assert plan_transition(balance, LedgerAction.RELEASE) == [
        Move(RewardState.HELD, RewardState.PENDING, 1000)
    ]
    assert plan_transition(balance, LedgerAction.REFUSE) == [
        Move(RewardState.HELD, RewardState.REJECTED, 1000)
    ]
    # A refund reverses from pending, then held, then approved.
    split = {**balance, "pending": 300, "held": 400, "approved": 300}
    assert plan_reversal(split, 800) == [
        Move(RewardState.PENDING, RewardState.REVERSED, 300),
        Move(RewardState.HELD, RewardState.REVERSED, 400),
        Move(RewardState.APPROVED, RewardState.REVERSED, 100),
    ]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("gclid=Cj0KCQ&utm_source=google", "gclid"),
        ("utm_source=x;FBCLID=abc", "fbclid"),
        ("li_fat_id=1", "li_fat_id"),
        ("msclkid=z&gclid=y", "msclkid"),
        ("utm_source=newsletter&ref=gclidish", None),
        ("", None),
    ],
)
def test_ad_click_ids_are_named_from_the_landing_query(query: str, param: str | None) -> None:
    assert ad_click_param(query) == param


def test_disposable_domains_come_from_the_maintained_list() -> None:
    assert is_disposable("x@mailinator.com") and is_disposable("x@sub.mailinator.com")
    assert not is_disposable("x@gmail.com") and not is_disposable("x@example.com")


def test_fraud_rules_are_part_of_the_versioned_program_rules_with_defaults() -> None:
    stored_before = ProgramRules.model_validate({"attribution_window_days": 30})
    assert stored_before.fraud == FraudRules()
    assert stored_before.fraud.self_referral.action == RuleAction.REJECT
    with pytest.raises(ValueError):
        FraudRules.model_validate({"click_flood": {"action": "hold", "max_clicks": 0}})
