"""For operators: /healthz (alive), /readyz (dependencies reachable), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.routes.deps import AppRuntime, CurrentMerchant
from app.schemas import MerchantInfo
from app.security import bearer_matches
from app.services import health

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, runtime: AppRuntime) -> JSONResponse:
    """503 when PostgreSQL is unreachable; 200 "degraded" while Redis is.

    Without Redis the redirect keeps answering (clicks go to the fsync'd local spool and are
    replayed later), so the instance must stay in the load balancer's rotation: a shopper is never
    stuck on our page. The body and `referral_degraded` tell operators what is going on.
    """
    body = await health.readiness(runtime)
    status = 503 if body["status"] == "unavailable" else 200
    token = runtime.settings.ops_token
    if token and not bearer_matches(request.headers.get("authorization", ""), token):
        body = {"status": body["status"]}  # the details are for operators
    return JSONResponse(body, status_code=status)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(runtime: AppRuntime) -> Response:
    await health.refresh_gauges(runtime)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/me", response_model=MerchantInfo, tags=["merchant"])
async def me(merchant: CurrentMerchant) -> MerchantInfo:
    return MerchantInfo(id=merchant.id, name=merchant.name)
