"""Reward amounts: what the advocate and the referred friend earn for one attributed conversion
(what a refund takes back: app/attribution/refunds.py). Pure functions, integer minor units,
Decimal percentages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Literal

from app.attribution.rules import FixedReward, PercentReward, ProgramRules, Reward, TieredReward

Beneficiary = Literal["advocate", "friend"]
ConversionType = Literal["signup", "purchase"]


@dataclass(frozen=True, slots=True)
class Sale:
    type: ConversionType
    amount_minor: int  # 0 for a signup
    currency: str | None
    occurred_at: datetime
    prior_rewarded_purchases: int  # this customer's earlier purchases rewarded in the program
    advocate_successful_referrals: int  # the advocate's earlier rewarded referrals
    # Whether the conversion names its customer (id or email): without, "first purchase" and
    # "at most N per customer" cannot be known, and are not guessed.
    customer_known: bool = True


@dataclass(frozen=True, slots=True)
class RewardDraft:
    beneficiary: Beneficiary
    amount_minor: int
    currency: str
    hold_until: datetime


@dataclass(frozen=True, slots=True)
class NoReward:
    reason: str


def _amount(rule: Reward, sale: Sale) -> int:
    if isinstance(rule, FixedReward):
        return rule.amount_minor
    if isinstance(rule, PercentReward):
        # Rounded down: a percentage never pays a fraction of a cent more than promised.
        amount = int(
            (Decimal(sale.amount_minor) * rule.percent / 100).to_integral_value(ROUND_DOWN)
        )
        return min(amount, rule.cap_minor) if rule.cap_minor is not None else amount
    assert isinstance(rule, TieredReward)
    tier = [t for t in rule.tiers if t.min_referrals <= sale.advocate_successful_referrals][-1]
    return tier.amount_minor


def eligibility(rules: ProgramRules, sale: Sale) -> str | None:
    """Why this conversion earns nothing under the rules, or None when it earns."""
    if rules.reward_event == "signup":
        return None if sale.type == "signup" else "the program rewards signups, not purchases"
    if sale.type != "purchase":
        return "the program rewards purchases, not signups"
    if sale.currency != rules.currency:
        return f"order currency {sale.currency} is not the program currency {rules.currency}"
    if sale.amount_minor < rules.min_order_minor:
        return f"order below the minimum of {rules.min_order_minor} minor units"
    counts_per_customer = (
        rules.reward_event == "first_purchase" or rules.max_rewarded_purchases is not None
    )
    if counts_per_customer and not sale.customer_known:
        return (
            "the program rewards a customer's first purchases, and this purchase names no "
            "customer (send customer_id or customer_email)"
        )
    if rules.reward_event == "first_purchase" and sale.prior_rewarded_purchases > 0:
        return "only the customer's first purchase is rewarded"
    limit = rules.max_rewarded_purchases
    if limit is not None and sale.prior_rewarded_purchases >= limit:
        return f"the customer's first {limit} purchases were already rewarded"
    return None


def compute_rewards(rules: ProgramRules, sale: Sale) -> list[RewardDraft] | NoReward:
    reason = eligibility(rules, sale)
    if reason is not None:
        return NoReward(reason)
    hold_until = sale.occurred_at + timedelta(days=rules.hold_days)
    drafts = []
    sides: tuple[tuple[Beneficiary, Reward | None], ...] = (
        ("advocate", rules.advocate_reward),
        ("friend", rules.friend_reward),
    )
    for beneficiary, rule in sides:
        if rule is None:
            continue
        amount = _amount(rule, sale)
        if amount > 0:
            drafts.append(RewardDraft(beneficiary, amount, rules.currency, hold_until))
    return drafts or NoReward("the rules define no reward")
