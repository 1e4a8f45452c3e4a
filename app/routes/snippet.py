"""GET /t/rt.js: the snippet for the shop's pages (app/static/rt.js), with the click id's query
parameter filled in, served with a validator and a day of caching."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request, Response

from app.routes.deps import AppSettings

router = APIRouter(tags=["snippet"])
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
_SOURCE = STATIC_DIR / "rt.js"


@lru_cache(maxsize=4)
def _script(click_param: str) -> tuple[bytes, str]:
    body = _SOURCE.read_text().replace("__CLICK_PARAM__", click_param).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


@router.get(
    "/t/rt.js",
    response_class=Response,
    responses={
        200: {"content": {"application/javascript": {}}},
        304: {"description": "Unchanged."},
    },
)
async def snippet(request: Request, settings: AppSettings) -> Response:
    """Paste `<script src="…/t/rt.js" data-merchant="…" data-days="30"></script>` on every page:
    it keeps the click id and referral code of a landing in first-party cookies, exposes
    `referral.clickId()`, `referral.code()`, `referral.fill(form)` and, on the confirmation page,
    `referral.trackOrder({orderId, amountMinor, currency})`."""
    body, etag = _script(settings.click_id_param)
    headers = {"cache-control": "public, max-age=86400", "etag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/javascript", headers=headers)
