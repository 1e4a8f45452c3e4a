"""The audit trail: every management write, newest first, with filters and a cursor (the
`admin` scope). Thin: app/storage/audit.py holds the reads; the records are written by
app/services/tx.py with each change."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.routes.deps import CurrentMerchant, Pool
from app.services import api_keys as keys_service

router = APIRouter(tags=["api keys"])


class AuditRecord(BaseModel):
    id: int
    key_id: UUID | None = Field(description="The API key that made the change.")
    at: datetime
    operation: str = Field(description="e.g. PATCH /v1/links/{link_id}")
    object_ids: dict[str, str]
    change: Any = Field(description="The request's JSON body, or an upload's size and digest.")


class AuditPage(BaseModel):
    records: list[AuditRecord]
    next_cursor: int | None = Field(description="Pass as `before` for the next page.")


@router.get("/v1/audit", response_model=AuditPage)
async def read_audit(
    merchant: CurrentMerchant, pool: Pool,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="A `next_cursor`.")] = None,
    key_id: UUID | None = None,
    object_id: Annotated[str | None, Query(pattern=r"^[0-9a-fA-F-]{1,64}$")] = None,
    operation: Annotated[str | None, Query(pattern=r"^[A-Z]{3,7} /[\w/{}.-]{0,190}$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:  # fmt: skip
    return await keys_service.audit_page(
        pool, merchant.id, before=before, key_id=key_id, object_id=object_id,
        operation=operation, limit=limit,
    )  # fmt: skip
