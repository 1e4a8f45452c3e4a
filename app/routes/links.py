"""Management API: advocates and their links (with QR codes)."""

from __future__ import annotations

import io
from typing import Any, Literal
from uuid import UUID

import segno
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from app.routes.deps import AppSettings, CurrentMerchant, Pool, RedisConn
from app.schemas import Advocate, AdvocateCreate, Link, LinkCreate, LinkUpdate, LinkWithClicks
from app.services import links as links_service
from app.settings import Settings
from app.storage.rows import AdvocateRow, LinkRow

router = APIRouter(tags=["advocates and links"])


def link_view(link: LinkRow, settings: Settings) -> dict[str, Any]:
    return {**link, "url": f"{settings.public_base_url.rstrip('/')}/r/{link['code']}"}


def advocate_view(
    advocate: AdvocateRow, links: list[LinkRow], settings: Settings
) -> dict[str, Any]:
    return {**advocate, "links": [link_view(link, settings) for link in links]}


@router.post(
    "/v1/programs/{program_id}/advocates",
    status_code=201,
    response_model=Advocate,
    responses={200: {"model": Advocate, "description": "Already enrolled: the same advocate."}},
)
async def enroll_advocate(
    program_id: UUID,
    body: AdvocateCreate,
    merchant: CurrentMerchant,
    pool: Pool,
    redis: RedisConn,
    settings: AppSettings,
) -> Any:
    advocate, links, created = await links_service.enroll_advocate(
        pool,
        redis,
        merchant.id,
        program_id,
        external_id=body.external_id,
        name=body.name,
        email=body.email,
        keyring=settings.keyring,
    )
    view = Advocate.model_validate(advocate_view(advocate, links, settings))
    return JSONResponse(view.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/v1/advocates/{advocate_id}", response_model=Advocate)
async def get_advocate(
    advocate_id: UUID, merchant: CurrentMerchant, pool: Pool, settings: AppSettings
) -> dict[str, Any]:
    advocate, links = await links_service.get_advocate(pool, merchant.id, advocate_id)
    return advocate_view(advocate, links, settings)


@router.post("/v1/advocates/{advocate_id}/links", status_code=201, response_model=Link)
async def create_link(
    advocate_id: UUID,
    body: LinkCreate,
    merchant: CurrentMerchant,
    pool: Pool,
    redis: RedisConn,
    settings: AppSettings,
) -> dict[str, Any]:
    link = await links_service.issue_link(
        pool, redis, merchant.id, advocate_id, channel=body.channel, destination=body.destination
    )
    return link_view(link, settings)


@router.get("/v1/links/{link_id}", response_model=LinkWithClicks)
async def get_link(
    link_id: UUID, merchant: CurrentMerchant, pool: Pool, settings: AppSettings
) -> dict[str, Any]:
    link, clicks = await links_service.get_link_with_clicks(pool, merchant.id, link_id)
    return {**link_view(link, settings), "clicks": clicks}


@router.patch("/v1/links/{link_id}", response_model=Link)
async def update_link(
    link_id: UUID,
    body: LinkUpdate,
    merchant: CurrentMerchant,
    pool: Pool,
    redis: RedisConn,
    settings: AppSettings,
) -> dict[str, Any]:
    link = await links_service.set_link_active(pool, redis, merchant.id, link_id, body.active)
    return link_view(link, settings)


@router.get(
    "/v1/links/{link_id}/qr",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}, "image/png": {}}}},
)
async def link_qr_code(
    link_id: UUID,
    merchant: CurrentMerchant,
    pool: Pool,
    settings: AppSettings,
    format: Literal["svg", "png"] = "svg",
    scale: int = Query(8, ge=1, le=40, description="Pixels per module."),
) -> Response:
    """A QR code of the link's URL, drawn by `segno` (pure Python, no imaging library)."""
    link = await links_service.get_link(pool, merchant.id, link_id)
    qr = segno.make(link_view(link, settings)["url"], error="m")
    buffer = io.BytesIO()
    qr.save(buffer, kind=format, scale=scale, border=4)
    media = "image/svg+xml" if format == "svg" else "image/png"
    return Response(buffer.getvalue(), media_type=media)
