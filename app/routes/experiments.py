"""Reward experiments: start one on a program, read it and its results, end it, promote a
variant. Thin: app/services/experiments.py decides, app/attribution/experiments.py counts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.attribution.rules import ProgramRules
from app.bounds import Text
from app.routes.deps import CurrentMerchant, Pool, RedisConn
from app.services import experiments as experiments_service

router = APIRouter(tags=["experiments"])

VariantKey = Field(pattern=r"^[A-Za-z0-9_-]{1,20}$", description="e.g. A, B, control")


class VariantIn(BaseModel):
    key: str = VariantKey
    weight: int = Field(1, ge=1, le=1000, description="Share of advocates, relative.")
    rules: ProgramRules = Field(description="A complete rule set: both sides' rewards, hold, "
                                "fraud rules… in the program currency.")  # fmt: skip
    share_message: Text | None = Field(None, max_length=500, description="The offer in words.")


class ExperimentIn(BaseModel):
    name: Text = Field(min_length=1, max_length=200)
    variants: list[VariantIn] = Field(
        min_length=2, max_length=5, description="The first is the control."
    )
    baseline_rate: float = Field(
        ge=0.001, le=0.99, description="The referral rate expected without a change: the share of "
        "advocates who bring at least one converting friend."
    )  # fmt: skip
    minimum_detectable_effect: float = Field(
        ge=0.001, le=0.5, description="The smallest absolute difference in referral rate worth "
        "detecting (0.02 = two points)."
    )  # fmt: skip
    alpha: float = Field(0.05, ge=0.001, le=0.2, description="The chance of calling a winner "
                         "when there is none, however often the results are read.")  # fmt: skip
    power: float = Field(0.8, ge=0.5, le=0.99)


class VariantOut(BaseModel):
    key: str
    weight: int
    rules: ProgramRules
    share_message: str | None
    advocates: int


class ExperimentOut(BaseModel):
    id: UUID
    program_id: UUID
    name: str
    status: Literal["running", "ended"]
    baseline_rate: float
    minimum_detectable_effect: float
    alpha: float
    power: float
    required_advocates_per_variant: int
    started_at: datetime
    ended_at: datetime | None
    promoted_variant: str | None
    promoted_rules_version: int | None
    variants: list[VariantOut]


class Estimate(BaseModel):
    value: float | None
    low: float | None = Field(description="95 % interval.")
    high: float | None


class VariantResults(BaseModel):
    key: str
    advocates: int
    sharers: int = Field(description="Advocates with at least one human click.")
    referrers: int = Field(description="Advocates with at least one converting friend.")
    clicks: int
    conversions: int
    revenue_minor: int
    reward_cost_minor: int
    share_rate: Estimate
    referral_rate: Estimate = Field(description="The decision metric.")
    clicks_per_advocate: Estimate
    friend_conversion_rate: Estimate = Field(description="Conversions per click.")
    revenue_per_advocate_minor: Estimate
    reward_cost_per_conversion_minor: Estimate
    reward_cost_per_revenue: Estimate


class ComparisonOut(BaseModel):
    variant: str
    against: str
    difference: float | None = Field(description="Referral rate, variant minus control.")
    low: float | None = Field(description="Always-valid confidence sequence at this look.")
    high: float | None
    likelihood_ratio: float
    significant: bool


class AnswerOut(BaseModel):
    verdict: Literal["not_enough_data", "no_difference", "winner"]
    words: str
    winner: str | None
    required_advocates_per_variant: int
    metric: Literal["referral_rate"]
    comparisons: list[ComparisonOut]


class ResultsOut(BaseModel):
    experiment_id: UUID
    status: Literal["running", "ended"]
    as_of: datetime
    currency: str
    answer: AnswerOut
    variants: list[VariantResults]


class PromoteIn(BaseModel):
    variant: str = VariantKey


@router.post("/v1/programs/{program_id}/experiments", status_code=201,
             response_model=ExperimentOut)  # fmt: skip
async def start_experiment(
    program_id: UUID, body: ExperimentIn, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Start an experiment (one at a time per program); every advocate is assigned a variant."""
    return await experiments_service.start(
        pool, merchant.id, program_id, name=body.name, baseline=body.baseline_rate,
        effect=body.minimum_detectable_effect, alpha=body.alpha, power=body.power,
        variants=[(v.key, v.weight, v.rules, v.share_message) for v in body.variants],
    )  # fmt: skip


@router.get("/v1/programs/{program_id}/experiments", response_model=list[ExperimentOut])
async def list_experiments(
    program_id: UUID, merchant: CurrentMerchant, pool: Pool
) -> list[dict[str, Any]]:
    return await experiments_service.list_for_program(pool, merchant.id, program_id)


@router.get("/v1/experiments/{experiment_id}", response_model=ExperimentOut)
async def read_experiment(
    experiment_id: UUID, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    return await experiments_service.get(pool, merchant.id, experiment_id)


@router.get("/v1/experiments/{experiment_id}/results", response_model=ResultsOut)
async def experiment_results(
    experiment_id: UUID, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Per variant, with intervals, and the answer in words (valid at any look)."""
    return await experiments_service.results(pool, merchant.id, experiment_id, datetime.now(UTC))


@router.post("/v1/experiments/{experiment_id}/end", response_model=ExperimentOut)
async def end_experiment(
    experiment_id: UUID, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Freeze the results; conversions from now on get the program's rules (idempotent)."""
    return await experiments_service.end(pool, merchant.id, experiment_id, datetime.now(UTC))


@router.post("/v1/experiments/{experiment_id}/promote", response_model=ExperimentOut)
async def promote_variant(
    experiment_id: UUID, body: PromoteIn, merchant: CurrentMerchant, pool: Pool, redis: RedisConn
) -> dict[str, Any]:
    """End the experiment and make the variant's rules the program's next rules version."""
    return await experiments_service.promote(
        pool, redis, merchant.id, experiment_id, body.variant, datetime.now(UTC)
    )
