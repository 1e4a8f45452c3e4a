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
        return (f"order currency {sale.currency} is not the program currency {rules.currency}, "
                "and no exchange rate for its day was posted")  # fmt: skip
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


# -- Renewals -------------------------------------------------------------------------------------


def _add_months(at: datetime, months: int) -> datetime:
    """The same day and time `months` calendar months later (the month's last day when it has
    fewer days)."""
    month = at.month - 1 + months
    year, month = at.year + month // 12, month % 12 + 1
    days = [31, 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28, 31, 30,
            31, 30, 31, 31, 30, 31, 30, 31][month - 1]  # fmt: skip
    return at.replace(year=year, month=month, day=min(at.day, days))


def renewal_rewards(
    rules: ProgramRules, amount_minor: int, currency: str | None, occurred_at: datetime,
    first_purchase_at: datetime, rewarded_renewals: int,
) -> list[RewardDraft] | NoReward:  # fmt: skip
    """The advocate's commission on a renewal of a subscription they referred (the friend earns
    nothing on renewals), by the program's recurring rule."""
    recurring = rules.recurring
    if recurring.mode == "none":
        return NoReward("the program does not reward renewals")
    if currency != rules.currency:
        return NoReward(
            f"order currency {currency} is not the program currency {rules.currency}, and no "
            "exchange rate for its day was posted"
        )
    if recurring.mode == "months":
        assert recurring.months is not None  # validated with the rules
        if occurred_at >= _add_months(first_purchase_at, recurring.months):
            return NoReward(f"past the {recurring.months} months of recurring commission after "
                            "the first purchase")  # fmt: skip
    if recurring.mode == "payments":
        assert recurring.payments is not None
        if rewarded_renewals >= recurring.payments:
            return NoReward(f"the first {recurring.payments} renewals were already rewarded")
    if recurring.percent_after_first is not None:
        amount = int((Decimal(amount_minor) * recurring.percent_after_first / 100)
                     .to_integral_value(ROUND_DOWN))  # fmt: skip
    elif rules.advocate_reward is not None:
        sale = Sale("purchase", amount_minor, currency, occurred_at, 0, 0)
        amount = _amount(rules.advocate_reward, sale)
    else:
        amount = 0
    if amount <= 0:
        return NoReward("the rules define no reward for renewals")
    hold_until = occurred_at + timedelta(days=rules.hold_days)
    return [RewardDraft("advocate", amount, rules.currency, hold_until)]


# -- Orders in another currency ------------------------------------------------------------------


def convert(amount_minor: int, from_exponent: int, to_exponent: int, rate: Decimal) -> int:
    """An amount in minor units of one currency in minor units of another, at `rate` (one unit
    of the first in units of the second), rounded down — exactly, in Decimal."""
    value = Decimal(amount_minor).scaleb(-from_exponent) * rate
    return int(value.scaleb(to_exponent).to_integral_value(ROUND_DOWN))
