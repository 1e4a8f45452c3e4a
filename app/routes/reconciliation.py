"""Reconciliation with the shop's orders: upload a period's orders (CSV or JSON lines), read the
report, apply it. Thin: app/services/reconciliation.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from app.routes.deps import CurrentMerchant, Pool
from app.services import reconciliation as reconciliation_service

router = APIRouter(tags=["reconciliation"])

_UPLOAD = {
    "requestBody": {
        "required": True,
        "description": "The shop's orders: CSV with a header row (order_id, status, amount or "
        "amount_minor, currency, optionally customer_id and click_id), or JSON lines with the same "
        "keys. status: paid (or completed, fulfilled…) or cancelled (or refunded, voided…).",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


class DifferenceOut(BaseModel):
    kind: Literal["rewarded_but_cancelled", "amount_differs", "missing_here", "missing_there"]
    order_id: str
    detail: str
    ours_minor: int | None
    theirs_minor: int | None
    currency: str | None
    conversion_id: UUID | None


class AppliedOut(BaseModel):
    order_id: str
    kind: str
    reversed_minor: int


class ReportOut(BaseModel):
    id: UUID
    period_start: datetime
    period_end: datetime
    orders: int = Field(description="Orders in the upload.")
    counts: dict[str, int]
    differences: list[DifferenceOut]
    created_at: datetime
    applied_at: datetime | None
    applied: list[AppliedOut] | None = Field(description="What applying it reversed, per order.")


@router.post("/v1/reconciliation-reports", status_code=201, response_model=ReportOut,
             openapi_extra=_UPLOAD)  # fmt: skip
async def create_report(
    request: Request, merchant: CurrentMerchant, pool: Pool,
    period_start: Annotated[AwareDatetime, Query(description="Inclusive, ISO 8601 with offset")],
    period_end: Annotated[AwareDatetime, Query(description="Exclusive")],
) -> dict[str, Any]:  # fmt: skip
    """Compare the shop's orders of the period with ours; the report is kept."""
    orders = reconciliation_service.parse_orders(
        request.headers.get("content-type", "text/csv"), await request.body()
    )
    return await reconciliation_service.create_report(
        pool, merchant.id, period_start, period_end, orders
    )


@router.get("/v1/reconciliation-reports", response_model=list[ReportOut])
async def list_reports(
    merchant: CurrentMerchant, pool: Pool, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[dict[str, Any]]:
    return await reconciliation_service.list_reports(pool, merchant.id, limit)


@router.get("/v1/reconciliation-reports/{report_id}", response_model=ReportOut)
async def read_report(report_id: UUID, merchant: CurrentMerchant, pool: Pool) -> dict[str, Any]:
    return await reconciliation_service.get_report(pool, merchant.id, report_id)


@router.post("/v1/reconciliation-reports/{report_id}/apply", response_model=ReportOut)
async def apply_report(report_id: UUID, merchant: CurrentMerchant, pool: Pool) -> dict[str, Any]:
    """Reverse, through the ledger, what the shop's orders no longer support (once)."""
    return await reconciliation_service.apply_report(pool, merchant.id, report_id,
                                                     datetime.now(UTC))  # fmt: skip
