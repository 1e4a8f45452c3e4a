"""The rows repositories return, typed: the columns each query selects, by name. (Dicts at run
time, so routes shape them into answers without copying; typed for the checker.)"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NotRequired, TypedDict
from uuid import UUID


class ProgramRow(TypedDict):
    id: UUID
    merchant_id: UUID
    name: str
    destination_url: str
    allowed_domains: list[str]
    attribution_window_days: int
    active: bool
    advocate_sees_amounts: bool
    share_text: str
    created_at: datetime


class AdvocateRow(TypedDict):
    id: UUID
    merchant_id: UUID
    program_id: UUID
    external_id: str
    name: str
    referral_code: str
    created_at: datetime
    banned_at: datetime | None
    ban_reason: str | None
    experiment: NotRequired[dict[str, Any] | None]  # the running experiment's variant


class LinkRow(TypedDict):
    id: UUID
    code: str
    merchant_id: UUID
    program_id: UUID
    advocate_id: UUID
    destination: str
    channel: str
    active: bool
    created_at: datetime


class RedirectRecord(TypedDict):
    """What the redirect needs about a code; also the JSON cached in Redis (`link:{code}`)."""

    id: str
    destination: str
    active: bool
    window_days: int


class RewardRow(TypedDict):
    """A reward with its ledger balances (state name → minor units) and current state."""

    id: UUID
    beneficiary: str
    amount_minor: int
    currency: str
    hold_until: datetime
    balances: dict[str, int]
    state: str


class FraudView(TypedDict):
    """A conversion's fraud decision: the action, the rules that fired (each with its reason,
    value, threshold and action) and the rules version that decided; its review, if held."""

    action: str
    findings: list[dict[str, Any]]
    rules_version: int | None
    review_id: UUID | None
    review_status: str | None


class ConversionRow(TypedDict):
    id: UUID
    event_id: str
    state: str
    type: str
    order_id: str | None
    amount_minor: int
    currency: str | None
    advocate_id: UUID | None
    program_id: UUID | None
    attribution_method: str | None
    attributed_click_id: UUID | None
    reason: str
    rules_version: int | None
    fraud: FraudView
    rewards: list[RewardRow]


class DeadLetterRow(TypedDict):
    id: int
    stream: str
    payload: bytes
    events: int
    error: str
    created_at: datetime
