"""Payout batches (create with an Idempotency-Key, read, mark sent, complete, fail, export as
PayPal, Wise or plain CSV) and advocates' payout details. Thin: app/services/payouts.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.bounds import NO_CONTROL_CHARACTERS, Email, Text
from app.routes.deps import CurrentMerchant, Pool
from app.services import payouts as payouts_service

router = APIRouter(tags=["payouts"])

Status = Literal["created", "sent", "completed", "failed"]


class PayoutIn(BaseModel):
    program_id: UUID | None = Field(None, description="Only this program (default: all).")


class PayoutLine(BaseModel):
    id: UUID
    advocate_id: UUID
    external_id: str
    currency: str
    gross_minor: int = Field(description="The approved rewards reserved for this line.")
    clawback_minor: int = Field(description="Owed after an earlier clawback, netted here.")
    amount_minor: int = Field(description="What is sent: gross minus clawback.")
    reward_ids: list[UUID]
    status: Status
    failure: str | None
    payout_email: str | None
    payout_reference: str | None


class SkippedBalance(BaseModel):
    advocate_id: UUID
    currency: str
    approved_minor: int
    reason: str


class PayoutBatch(BaseModel):
    id: UUID
    only_program_id: UUID | None = Field(description="The program it was limited to, if any.")
    idempotency_key: str
    status: Status
    created_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    totals_minor: dict[str, int] = Field(description="Per currency, the lines not failed.")
    lines: list[PayoutLine]
    skipped: list[SkippedBalance] = Field(description="Approved balances not paid, and why.")


class PayoutSummary(BaseModel):
    id: UUID
    only_program_id: UUID | None = Field(description="The program it was limited to, if any.")
    idempotency_key: str
    status: Status
    created_at: datetime
    finished_at: datetime | None


class FailedLine(BaseModel):
    line_id: UUID
    reason: Text = Field(min_length=1, max_length=500)


class CompleteIn(BaseModel):
    failed_lines: list[FailedLine] = Field(
        [], max_length=5000, description="Lines the provider did not pay, with the reason."
    )


class FailIn(BaseModel):
    reason: Text = Field(min_length=1, max_length=500)


class PayoutDetails(BaseModel):
    payout_email: Email | None = Field(None, description="PayPal, or Wise's send-by-email.")
    payout_name: Text | None = Field(None, max_length=200, description="The recipient's name.")
    payout_reference: Text | None = Field(
        None, max_length=200, description="Your own reference, for payouts you make yourself."
    )


IdempotencyKey = Annotated[
    str,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS,
           description="The same key answers the same batch."),
]  # fmt: skip


_SAME_BATCH: dict[int | str, dict[str, Any]] = {
    200: {"model": PayoutBatch, "description": "The batch of this key, made before."}
}


@router.post("/v1/payouts", status_code=201, response_model=PayoutBatch, responses=_SAME_BATCH)
async def create_payout(
    body: PayoutIn, merchant: CurrentMerchant, pool: Pool, idempotency_key: IdempotencyKey
) -> Any:
    """Gather every approved balance at or above the program's minimum payout, per advocate and
    currency, and reserve it at once."""
    batch, created = await payouts_service.create_batch(
        pool, merchant.id, idempotency_key, body.program_id
    )
    view = PayoutBatch.model_validate(batch)
    return JSONResponse(view.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/v1/payouts", response_model=list[PayoutSummary])
async def list_payouts(
    merchant: CurrentMerchant, pool: Pool, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[dict[str, Any]]:
    return await payouts_service.list_batches(pool, merchant.id, limit)


@router.get("/v1/payouts/{payout_id}", response_model=PayoutBatch)
async def read_payout(payout_id: UUID, merchant: CurrentMerchant, pool: Pool) -> dict[str, Any]:
    return await payouts_service.get_batch(pool, merchant.id, payout_id)


@router.post("/v1/payouts/{payout_id}/sent", response_model=PayoutBatch)
async def mark_payout_sent(
    payout_id: UUID, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """The file went to the payment provider."""
    return await payouts_service.mark_sent(pool, merchant.id, payout_id, datetime.now(UTC))


@router.post("/v1/payouts/{payout_id}/complete", response_model=PayoutBatch)
async def complete_payout(
    payout_id: UUID, body: CompleteIn, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Every line was paid but `failed_lines`: paid lines' rewards become paid, failed lines'
    return to approved."""
    failed = {f.line_id: f.reason for f in body.failed_lines}
    return await payouts_service.complete(pool, merchant.id, payout_id, failed, datetime.now(UTC))


@router.post("/v1/payouts/{payout_id}/fail", response_model=PayoutBatch)
async def fail_payout(
    payout_id: UUID, body: FailIn, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Nothing was paid: every line's rewards return to approved."""
    return await payouts_service.fail(pool, merchant.id, payout_id, body.reason, datetime.now(UTC))


@router.get(
    "/v1/payouts/{payout_id}/export", response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "The file; `Omitted-Lines` "
                     "lists lines a PayPal or Wise file cannot hold (no payout email)."}},
)  # fmt: skip
async def export_payout(
    payout_id: UUID, merchant: CurrentMerchant, pool: Pool,
    format: Literal["paypal", "wise", "csv"] = "csv",
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
) -> Response:  # fmt: skip
    body, omitted = await payouts_service.export(pool, merchant.id, payout_id, format, currency)
    headers = {"content-disposition": f'attachment; filename="payout-{payout_id}-{format}.csv"'}
    if omitted:
        headers["omitted-lines"] = ",".join(str(line) for line in omitted)
    return Response(body, media_type="text/csv; charset=utf-8", headers=headers)


@router.put("/v1/advocates/{advocate_id}/payout-details", status_code=204)
async def set_payout_details(
    advocate_id: UUID, body: PayoutDetails, merchant: CurrentMerchant, pool: Pool
) -> Response:
    await payouts_service.set_payout_details(
        pool, merchant.id, advocate_id, body.payout_email, body.payout_name, body.payout_reference
    )
    return Response(status_code=204)
