"""Fraud decisions: named rules over a conversion's facts, each with an action and thresholds,
and the reasons a person can read.

A program's fraud rules are part of its rules (app/attribution/rules.py), so they are versioned
with them and every decision records the version that made it. Each rule has an action: `off`,
`flag` (recorded only: a shadow mode to watch a rule before it bites), `hold` (the rewards wait in
the ledger's `held` state for a person) or `reject` (the rewards are rejected). A conversion's
action is the strongest of the rules that fired; the reward cap acts on the excess only.

Pure functions: the service (app/services/processing.py) gathers the facts from PostgreSQL —
counting what the thresholds ask for — and passes the time in; nothing here reads a clock or a
database. Emails arrive as hashes only: the canonical address and its one-character deletions are
hashed at the edge (app/security.py), so "one edit apart" is a set intersection here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import unquote_plus

from disposable_email_domains import blocklist as _DISPOSABLE
from pydantic import BaseModel, ConfigDict, Field

from app.attribution.ledger import Move, RewardState
from app.bounds import MAX_AMOUNT_MINOR, MAX_COUNT, Int


class RuleAction(StrEnum):
    OFF = "off"
    FLAG = "flag"
    HOLD = "hold"
    REJECT = "reject"


# A conversion's outcome: no rule fired, or the strongest action of those that did.
NO_ACTION = "none"
_RANK = {NO_ACTION: 0, RuleAction.OFF: 0, RuleAction.FLAG: 1, RuleAction.HOLD: 2,
         RuleAction.REJECT: 3}  # fmt: skip

Action = Annotated[RuleAction, Field(description="off | flag (record only) | hold | reject")]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SelfReferralRule(_Rule):
    """The customer is the advocate: same customer id, same email once normalised, or an email
    within `max_edit_distance` (0 or 1) of the advocate's."""

    action: Action = RuleAction.REJECT
    max_edit_distance: Int = Field(1, ge=0, le=1)


class SameDeviceRule(_Rule):
    """The converting browser (our cookie), or IP and user agent, was seen on the advocate's own
    purchases and signups."""

    action: Action = RuleAction.HOLD


class ClickFloodRule(_Rule):
    """More than `max_clicks` clicks on one link from one IP prefix within `minutes`."""

    action: Action = RuleAction.HOLD
    max_clicks: Int = Field(20, ge=1, le=MAX_COUNT)
    minutes: Int = Field(10, ge=1, le=1440)


class ConversionVelocityRule(_Rule):
    """More than `max_conversions` conversions for one advocate from one browser or IP prefix
    within `days`."""

    action: Action = RuleAction.FLAG
    max_conversions: Int = Field(3, ge=1, le=MAX_COUNT)
    days: Int = Field(7, ge=1, le=365)


class DisposableEmailRule(_Rule):
    """The customer's email is at a disposable-mailbox domain."""

    action: Action = RuleAction.HOLD


class PaidAdClickRule(_Rule):
    """The click's landing query carried an ad network's click id (gclid, fbclid, …)."""

    action: Action = RuleAction.FLAG


class FastConversionRule(_Rule):
    """A purchase less than `min_seconds` after its click."""

    action: Action = RuleAction.FLAG
    min_seconds: Int = Field(10, ge=1, le=86_400)


class HighValueOrderRule(_Rule):
    """An order above `above_minor` (minor units of the program currency)."""

    action: Action = RuleAction.FLAG
    above_minor: Int = Field(100_000, ge=0, le=MAX_AMOUNT_MINOR)


class RewardCapRule(_Rule):
    """The advocate's rewards in a calendar `period` (UTC) would exceed `cap_minor`: the excess
    is held or rejected, the rest goes on."""

    action: Action = RuleAction.OFF
    period: Literal["day", "week", "month"] = "month"
    cap_minor: Int = Field(50_000, ge=0, le=MAX_AMOUNT_MINOR)


class FraudRules(_Rule):
    self_referral: SelfReferralRule = SelfReferralRule()
    same_device_as_advocate: SameDeviceRule = SameDeviceRule()
    click_flood: ClickFloodRule = ClickFloodRule()
    conversion_velocity: ConversionVelocityRule = ConversionVelocityRule()
    disposable_email: DisposableEmailRule = DisposableEmailRule()
    paid_ad_click: PaidAdClickRule = PaidAdClickRule()
    fast_conversion: FastConversionRule = FastConversionRule()
    high_value_order: HighValueOrderRule = HighValueOrderRule()
    reward_cap: RewardCapRule = RewardCapRule()


# Not a configurable rule: a person banned the advocate.
ADVOCATE_BANNED = "advocate_banned"


# -- Facts the rules read -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdvocateFacts:
    external_id: str
    email_hash: bytes | None = None
    email_canonical: bytes | None = None
    email_near: frozenset[bytes] = frozenset()
    banned: bool = False


@dataclass(frozen=True, slots=True)
class ConversionFacts:
    """One conversion, with what the service counted for the thresholds (None: not known, e.g.
    no click, or no IP prefix to count by)."""

    type: str
    occurred_at: datetime
    amount_minor: int = 0
    currency: str | None = None
    customer_id: str | None = None
    email_hash: bytes | None = None
    email_canonical: bytes | None = None
    email_near: frozenset[bytes] = frozenset()
    email_disposable: bool = False
    clicked_at: datetime | None = None  # the attributed click
    ad_click_param: str | None = None
    # What of the converting browser was seen on the advocate's own conversions, in words.
    shared_device: str | None = None
    # The most clicks from the click's IP prefix on its link in any `minutes` window holding it.
    flood_clicks: int | None = None
    # The advocate's conversions from this browser or IP prefix within `days`, this one included.
    velocity_conversions: int | None = None
    # The advocate's rewards so far in the cap's period, and this conversion's advocate reward.
    period_rewards_minor: int = 0
    advocate_reward_minor: int = 0


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule that fired: why, with the value and the threshold that made it fire."""

    rule: str
    action: RuleAction
    reason: str
    value: int | str | None = None
    threshold: int | str | None = None

    def as_json(self) -> dict[str, object]:
        return {"rule": self.rule, "action": self.action.value, "reason": self.reason,
                "value": self.value, "threshold": self.threshold}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decision:
    findings: tuple[Finding, ...] = ()
    # The action on all of the conversion's rewards (the strongest finding, the cap aside).
    action: str = NO_ACTION
    cap_excess_minor: int = 0  # of the advocate's reward, held or rejected by the cap
    cap_action: RuleAction = RuleAction.OFF

    @property
    def outcome(self) -> str:
        """The conversion's fraud action as shown: none, flag, hold or reject."""
        cap = self.cap_action if self.cap_excess_minor else NO_ACTION
        return max(self.action, cap, key=lambda a: _RANK[a])

    @property
    def holds(self) -> bool:
        """Whether a person must look (something is held)."""
        return self.action == RuleAction.HOLD or (
            self.cap_excess_minor > 0 and self.cap_action == RuleAction.HOLD
        )

    @property
    def held_by(self) -> list[str]:
        return [f.rule for f in self.findings if f.action == RuleAction.HOLD]


def evaluate(rules: FraudRules, advocate: AdvocateFacts, c: ConversionFacts) -> Decision:
    """Every rule over the facts; the findings in rule order, and the resulting action."""
    found: list[Finding] = []

    def fire(rule: str, action: RuleAction, reason: str, value: object = None,
             threshold: object = None) -> None:  # fmt: skip
        if action != RuleAction.OFF:
            found.append(Finding(rule, action, reason, _plain(value), _plain(threshold)))

    if advocate.banned:
        fire(ADVOCATE_BANNED, RuleAction.REJECT, "the advocate is banned: their referrals earn "
             "nothing")  # fmt: skip
    if (why := _self_referral(rules.self_referral, advocate, c)) is not None:
        fire("self_referral", rules.self_referral.action, why)
    if c.shared_device is not None:
        fire("same_device_as_advocate", rules.same_device_as_advocate.action,
             f"the converting browser was seen on the advocate's own conversions "
             f"({c.shared_device})", c.shared_device)  # fmt: skip
    flood = rules.click_flood
    if c.flood_clicks is not None and c.flood_clicks > flood.max_clicks:
        fire("click_flood", flood.action,
             f"{c.flood_clicks} clicks on this link from the click's IP prefix within "
             f"{flood.minutes} minutes (more than {flood.max_clicks})",
             c.flood_clicks, flood.max_clicks)  # fmt: skip
    velocity = rules.conversion_velocity
    if c.velocity_conversions is not None and c.velocity_conversions > velocity.max_conversions:
        fire("conversion_velocity", velocity.action,
             f"{c.velocity_conversions} conversions for this advocate from this browser or IP "
             f"prefix within {velocity.days} days (more than {velocity.max_conversions})",
             c.velocity_conversions, velocity.max_conversions)  # fmt: skip
    if c.email_disposable:
        fire("disposable_email", rules.disposable_email.action,
             "the customer's email is at a disposable-mailbox domain")  # fmt: skip
    if c.ad_click_param:
        fire("paid_ad_click", rules.paid_ad_click.action,
             f"the click's landing page carried an ad click id ({c.ad_click_param}): paid "
             "traffic sent through a referral link", c.ad_click_param)  # fmt: skip
    fast = rules.fast_conversion
    if c.type == "purchase" and c.clicked_at is not None:
        seconds = int((c.occurred_at - c.clicked_at).total_seconds())
        if seconds < fast.min_seconds:
            fire("fast_conversion", fast.action,
                 f"purchased {max(seconds, 0)} s after the click (under {fast.min_seconds} s)",
                 max(seconds, 0), fast.min_seconds)  # fmt: skip
    high = rules.high_value_order
    if c.type == "purchase" and c.amount_minor > high.above_minor:
        fire("high_value_order", high.action,
             f"an order of {c.amount_minor} (minor units) is above {high.above_minor}",
             c.amount_minor, high.above_minor)  # fmt: skip

    action = max((f.action for f in found), key=lambda a: _RANK[a], default=NO_ACTION)
    cap, excess = rules.reward_cap, 0
    if cap.action != RuleAction.OFF and c.advocate_reward_minor > 0:
        total = c.period_rewards_minor + c.advocate_reward_minor
        excess = min(c.advocate_reward_minor, max(0, total - cap.cap_minor))
        if excess:
            fire("reward_cap", cap.action,
                 f"the advocate's rewards this {cap.period} would reach {total} of a cap of "
                 f"{cap.cap_minor}: {excess} over", total, cap.cap_minor)  # fmt: skip
    return Decision(tuple(found), str(action), excess, cap.action)


def _self_referral(rule: SelfReferralRule, a: AdvocateFacts, c: ConversionFacts) -> str | None:
    if c.customer_id is not None and c.customer_id == a.external_id:
        return "self-referral: the customer id is the advocate's own"
    if c.email_hash is not None and c.email_hash == a.email_hash:
        return "self-referral: the customer's email is the advocate's own"
    if c.email_canonical is not None and c.email_canonical == a.email_canonical:
        return ("self-referral: the customer's email is the advocate's once case, +tag and dots "
                "are removed")  # fmt: skip
    if rule.max_edit_distance >= 1 and c.email_near & a.email_near:
        return "self-referral: the customer's email is one character away from the advocate's"
    return None


def _plain(value: object) -> int | str | None:
    return value if value is None or isinstance(value, int | str) else str(value)


def strongest(actions: list[str]) -> str:
    return max(actions, key=lambda a: _RANK[a], default=NO_ACTION)


# -- What a decision does to a reward -----------------------------------------------------------


def reward_moves(decision: Decision, beneficiary: str, amount_minor: int) -> list[Move]:
    """The ledger moves right after a reward is created (all of it in pending)."""
    if decision.action == RuleAction.REJECT:
        return [Move(RewardState.PENDING, RewardState.REJECTED, amount_minor)]
    if decision.action == RuleAction.HOLD:
        return [Move(RewardState.PENDING, RewardState.HELD, amount_minor)]
    if beneficiary == "advocate" and decision.cap_excess_minor > 0:
        target = {RuleAction.HOLD: RewardState.HELD, RuleAction.REJECT: RewardState.REJECTED}
        if decision.cap_action in target:
            return [Move(RewardState.PENDING, target[decision.cap_action],
                         min(decision.cap_excess_minor, amount_minor))]  # fmt: skip
    return []


def decision_reason(decision: Decision) -> str:
    """The ledger entry's reason for the moves above."""
    acting = [f for f in decision.findings if f.action in (RuleAction.HOLD, RuleAction.REJECT)]
    return "; ".join(f"{f.action.value} by {f.rule}: {f.reason}" for f in acting)


def cap_period(period: str, at: datetime) -> tuple[datetime, datetime]:
    """The calendar period (UTC) around `at`: [start, end)."""
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


# -- Emails and landing queries -----------------------------------------------------------------

# Providers that ignore dots in the local part.
_DOTLESS = {"gmail.com", "googlemail.com"}


def canonical_email(email: str) -> str:
    """Lower-cased; `+tag` dropped (sub-addressing, most providers); dots dropped at Gmail-style
    providers; googlemail.com is gmail.com."""
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in _DOTLESS:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


def near_variants(canonical: str) -> set[str]:
    """The address and every address one deletion away in its local part: two addresses within
    one edit (insertion, deletion, substitution, adjacent swap) share at least one."""
    local, _, domain = canonical.rpartition("@")
    return {canonical, *(f"{local[:i]}{local[i + 1 :]}@{domain}" for i in range(len(local)))}


def is_disposable(email: str) -> bool:
    """At a disposable-mailbox domain, by the `disposable-email-domains` list (or a subdomain of
    one)."""
    domain = email.strip().lower().rpartition("@")[2]
    parts = domain.split(".")
    return any(".".join(parts[i:]) in _DISPOSABLE for i in range(len(parts) - 1))


# Ad networks' click-id parameters: paid traffic (Google, Microsoft, Meta, TikTok, X, LinkedIn,
# Pinterest, Snapchat, Reddit, Yandex, Quora).
AD_CLICK_PARAMS = frozenset({
    "gclid", "gbraid", "wbraid", "gclsrc", "dclid", "msclkid", "fbclid", "ttclid", "twclid",
    "li_fat_id", "epik", "sccid", "scclid", "rdt_cid", "yclid", "qclid",
})  # fmt: skip


def ad_click_param(query: str) -> str | None:
    """The first ad click-id parameter of a landing query (its name only), or None."""
    lowered = query.lower()
    if not any(name in lowered for name in AD_CLICK_PARAMS):
        return None  # the common case, without splitting
    for part in re.split("[&;]", query):
        name = unquote_plus(part.partition("=")[0]).strip().lower()
        if name in AD_CLICK_PARAMS:
            return name
    return None
