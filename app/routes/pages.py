"""Web pages people use, server-rendered (Jinja2, autoescaped), every asset served by us under a
Content-Security-Policy without inline scripts. Today: the advocate's own page (their link,
share buttons, QR code, friends' counts, rewards), behind their opaque token; the merchant
dashboard (app/routes/dashboard.py) renders with the same environment and headers."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import segno
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.errors import Unauthorized
from app.routes.deps import AppSettings, Pool
from app.services import stats as service

router = APIRouter(include_in_schema=False)
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
    autoescape=select_autoescape(["html"]),
)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
           "referrer-policy": "no-referrer", "cache-control": "no-store"}  # fmt: skip


def qr_svg(url: str) -> str:
    buffer = io.BytesIO()
    segno.make(url, error="m").save(buffer, kind="svg", scale=4, border=2, xmldecl=False,
                                    svgns=True, omitsize=True)  # fmt: skip
    return buffer.getvalue().decode()


@router.get("/advocate", response_class=HTMLResponse)
async def advocate_page(
    pool: Pool, settings: AppSettings, token: Annotated[str, Query(max_length=400)] = ""
) -> HTMLResponse:
    try:
        page = await service.own_page(pool, settings, token, datetime.now(UTC))
    except Unauthorized:
        html = TEMPLATES.get_template("expired.html").render()
        return HTMLResponse(html, status_code=401, headers=HEADERS)
    page["qr_svg"] = qr_svg(page["link_url"]) if page["link_url"] else ""
    html = TEMPLATES.get_template("advocate.html").render(**page)
    return HTMLResponse(html, headers=HEADERS)
