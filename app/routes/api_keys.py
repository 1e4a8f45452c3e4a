"""A merchant's API keys: issue with scopes, list, rotate, revoke (the `admin` scope). Thin:
app/services/api_keys.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from app.bounds import Int, Text
from app.routes.deps import CurrentMerchant, Pool
from app.scopes import Scope
from app.services import api_keys as keys_service

router = APIRouter(tags=["api keys"])


class KeyIn(BaseModel):
    label: Text = Field("", max_length=200, description="Which system holds it.")
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=4)] = Field(
        description="read; links:write; rewards:write; admin (everything)."
    )


class KeyOut(BaseModel):
    id: UUID
    key_prefix: str = Field(description="The key's first characters, to recognise it.")
    label: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None = Field(description="Kept to the minute.")
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_to: UUID | None


class IssuedKey(KeyOut):
    key: str = Field(description="The secret, shown this once (`rk_…`): store it now.")


class RotateIn(BaseModel):
    overlap_seconds: Int = Field(
        0, ge=0, le=30 * 86_400, description="How long the old key keeps working (0: it stops now)."
    )


@router.post("/v1/api-keys", status_code=201, response_model=IssuedKey)
async def issue_key(body: KeyIn, merchant: CurrentMerchant, pool: Pool) -> dict[str, Any]:
    return await keys_service.issue(pool, merchant.id, body.label, body.scopes)


@router.get("/v1/api-keys", response_model=list[KeyOut])
async def list_keys(merchant: CurrentMerchant, pool: Pool) -> list[dict[str, Any]]:
    return await keys_service.list_keys(pool, merchant.id)


@router.post("/v1/api-keys/{key_id}/rotate", status_code=201, response_model=IssuedKey)
async def rotate_key(
    key_id: UUID, body: RotateIn, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    return await keys_service.rotate(pool, merchant.id, key_id, body.overlap_seconds,
                                     datetime.now(UTC))  # fmt: skip


@router.delete("/v1/api-keys/{key_id}", status_code=204)
async def revoke_key(key_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Response:
    """The key stops working at once, on every replica."""
    await keys_service.revoke(pool, merchant.id, key_id)
    return Response(status_code=204)
