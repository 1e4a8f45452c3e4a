"""A program's rules: who is credited, for which events, how much each side earns, and which
fraud rules guard it (app/attribution/fraud.py).

Rules are versioned per program: a change stores a new version and every reward records the
version it was computed with, so past rewards never change when the rules do.
Money is integer minor units (cents) with an ISO 4217 currency; percentages are Decimals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from app.attribution.fraud import FraudRules
from app.bounds import MAX_AMOUNT_MINOR, MAX_COUNT, Int

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, e.g. EUR")]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FixedReward(_Rule):
    kind: Literal["fixed"] = "fixed"
    amount_minor: Int = Field(
        gt=0, le=MAX_AMOUNT_MINOR, description="In minor units of the program currency."
    )


class PercentReward(_Rule):
    kind: Literal["percent"] = "percent"
    percent: Annotated[
        Decimal,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "multipleOf": 0.001},
                    {"type": "string", "pattern": r"^(100(\.0{1,3})?|[0-9]{1,2}(\.[0-9]{1,3})?)$"},
                ],
                "description": "Above 0, at most 100, three decimals at most (a string keeps it "
                "exact).",
            }
        ),
    ] = Field(gt=0, le=100, max_digits=6, decimal_places=3)
    cap_minor: Int | None = Field(
        None, gt=0, le=MAX_AMOUNT_MINOR, description="At most this much per conversion."
    )


class Tier(_Rule):
    min_referrals: Int = Field(
        ge=0, le=MAX_COUNT, description="Successful referrals before this one."
    )
    amount_minor: Int = Field(gt=0, le=MAX_AMOUNT_MINOR)


class TieredReward(_Rule):
    kind: Literal["tiered"] = "tiered"
    tiers: list[Tier] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def _ordered(self) -> TieredReward:
        counts = [t.min_referrals for t in self.tiers]
        if counts != sorted(set(counts)) or counts[0] != 0:
            raise ValueError("tiers must start at min_referrals 0 and increase strictly")
        return self


Reward = Annotated[FixedReward | PercentReward | TieredReward, Field(discriminator="kind")]


class RecurringRule(_Rule):
    """Commission on a subscription's renewals, for the advocate of its first purchase."""

    mode: Literal["none", "lifetime", "months", "payments"] = Field(
        "none",
        description="none; lifetime; for `months` after the first purchase; or for the "
        "first `payments` renewals.",
    )
    months: Int | None = Field(None, ge=1, le=120)
    payments: Int | None = Field(None, ge=1, le=1000)
    percent_after_first: Annotated[Decimal, WithJsonSchema(
        {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 100, "multipleOf": 0.001},
                   {"type": "string",
                    "pattern": r"^(100(\.0{1,3})?|[0-9]{1,2}(\.[0-9]{1,3})?)$"}, {"type": "null"}],
         "description": "A renewal's percent; without, the advocate reward applies to it."}
    )] | None = Field(None, gt=0, le=100, max_digits=6, decimal_places=3)  # fmt: skip

    @model_validator(mode="after")
    def _needs_its_count(self) -> RecurringRule:
        if self.mode == "months" and self.months is None:
            raise ValueError("mode months needs months")
        if self.mode == "payments" and self.payments is None:
            raise ValueError("mode payments needs payments")
        return self


class ProgramRules(_Rule):
    attribution_window_days: Int = Field(30, ge=1, le=365)
    attribution_model: Literal["last_click", "first_click"] = "last_click"
    reward_event: Literal["signup", "first_purchase", "every_purchase"] = "first_purchase"
    max_rewarded_purchases: Int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="With every_purchase: reward at most this many per customer.",
    )
    min_order_minor: Int = Field(0, ge=0, le=MAX_AMOUNT_MINOR)
    hold_days: Int = Field(14, ge=0, le=365, description="Pending this long before approval.")
    currency: Currency = "EUR"
    advocate_reward: Reward | None = FixedReward(amount_minor=1000)
    friend_reward: Reward | None = None
    recurring: RecurringRule = Field(
        RecurringRule(), description="Commission on renewals (subscriptions)."
    )
    min_payout_minor: Int = Field(
        0, ge=0, le=MAX_AMOUNT_MINOR,
        description="An advocate's approved balance is paid out from this amount on.",
    )  # fmt: skip
    fraud: FraudRules = Field(
        FraudRules(),
        description="Fraud rules: each an action (off, flag, hold, reject) and its "
        "thresholds. Versioned with the rest of the rules.",
    )

    @model_validator(mode="after")
    def _percent_needs_purchase(self) -> ProgramRules:
        for reward in (self.advocate_reward, self.friend_reward):
            if isinstance(reward, PercentReward) and self.reward_event == "signup":
                raise ValueError("a percent reward needs a purchase event, not signup")
        return self
