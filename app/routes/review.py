"""The review queue (what the fraud rules held, and a person's decision) and the preview of a
proposed fraud rule set. Thin: app/services/review.py and app/services/fraud.py decide."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.attribution.fraud import FraudRules
from app.bounds import Text
from app.routes.deps import CurrentMerchant, Pool, RedisConn
from app.schemas import ConversionView
from app.services import fraud as fraud_service
from app.services import review as review_service

router = APIRouter(tags=["review"])

ReviewStatus = Literal["open", "approved", "rejected", "banned"]
RuleName = Literal[
    "self_referral", "same_device_as_advocate", "click_flood", "conversion_velocity",
    "disposable_email", "paid_ad_click", "fast_conversion", "high_value_order", "reward_cap",
]  # fmt: skip


class ReviewItem(BaseModel):
    id: UUID
    program_id: UUID
    advocate_id: UUID
    conversion_id: UUID
    rules: list[str] = Field(description="The rules that held it.")
    opened_at: datetime
    status: ReviewStatus
    decided_at: datetime | None
    decided_by: UUID | None = Field(description="The API key that decided.")
    note: str | None


class ReviewItemDetail(ReviewItem):
    conversion: ConversionView


class ReviewPage(BaseModel):
    items: list[ReviewItem]
    next_cursor: UUID | None = Field(description="Pass as `cursor` for the next page.")


class ReviewDecisionIn(BaseModel):
    decision: Literal["approve", "reject", "ban_advocate"] = Field(
        description="approve: held rewards continue to their normal hold; reject: they are "
        "rejected; ban_advocate: the advocate's links stop redirecting, their pending and held "
        "rewards are rejected and later conversions earn nothing."
    )
    note: Text = Field("", max_length=1000, description="Why, for the record.")


class PreviewIn(BaseModel):
    fraud: FraudRules = Field(description="The proposed fraud rules (the `fraud` of the rules).")
    days: int = Field(30, ge=1, le=90, description="How far back to look.")


class PreviewExample(BaseModel):
    conversion_id: UUID
    occurred_at: datetime
    current_action: str
    proposed_action: str
    findings: list[dict[str, Any]]


class PreviewOut(BaseModel):
    program_id: UUID
    rules_version: int = Field(description="The version whose decisions are compared.")
    days: int
    conversions: int = Field(description="Attributed signups and purchases evaluated.")
    truncated: bool = Field(description="More conversions than the preview evaluates (5,000).")
    current: dict[str, int] = Field(description="Conversions per action, as decided.")
    proposed: dict[str, int] = Field(description="Conversions per action, under the proposal.")
    changed: int
    per_rule: dict[str, dict[str, int]] = Field(description="Per rule, firings per action.")
    examples: list[PreviewExample]


@router.get("/v1/review/items", response_model=ReviewPage)
async def list_review_items(
    merchant: CurrentMerchant,
    pool: Pool,
    status: ReviewStatus = "open",
    program_id: UUID | None = None,
    advocate_id: UUID | None = None,
    rule: RuleName | None = None,
    cursor: Annotated[
        UUID | None, Query(description="The `next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Held conversions, oldest first."""
    return await review_service.list_items(
        pool, merchant.id, status=status, program=program_id, advocate=advocate_id, rule=rule,
        cursor=cursor, limit=limit,
    )  # fmt: skip


@router.get("/v1/review/items/{item_id}", response_model=ReviewItemDetail)
async def read_review_item(item_id: UUID, merchant: CurrentMerchant, pool: Pool) -> dict[str, Any]:
    """The item with its conversion: attribution evidence, fraud findings, rewards."""
    return await review_service.get_item(pool, merchant.id, item_id)


@router.post("/v1/review/items/{item_id}/decision", response_model=ReviewItemDetail)
async def decide_review_item(
    item_id: UUID, body: ReviewDecisionIn, merchant: CurrentMerchant, pool: Pool,
    redis: RedisConn,
) -> dict[str, Any]:  # fmt: skip
    """Decide once (the same decision again answers the same; another one is a 409)."""
    return await review_service.decide(
        pool, redis, merchant, item_id, body.decision, body.note, datetime.now(UTC)
    )


@router.post("/v1/programs/{program_id}/fraud-preview", response_model=PreviewOut)
async def preview_fraud_rules(
    program_id: UUID, body: PreviewIn, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """What proposed fraud rules would decide for the program's recent conversions, beside
    what was decided. Writes nothing."""
    return await fraud_service.preview(
        pool, merchant.id, program_id, body.fraud, body.days, datetime.now(UTC)
    )
